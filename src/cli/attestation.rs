//! `datanet attestation verify|prove|verify-proof`: offline checks of an epoch's attestation and of
//! one contributor's credit. No daemon, no network: only the files and a pinned signed manifest.

use super::Global;
use crate::attribution::epoch::{Attestation, CreditProof};
use crate::codec;
use crate::ids::PeerKey;
use crate::manifest::SignedManifest;
use anyhow::Context;
use clap::Subcommand;
use std::path::{Path, PathBuf};

/// Offline attestation commands.
#[derive(Subcommand, Debug)]
pub enum AttestationCmd {
    /// Write an attested epoch from this peer's ledger to a file (canonical bytes), for `verify`.
    /// Asks the running daemon when there is one, else reads the store.
    Export {
        /// Datanet id or name.
        datanet: String,
        /// The epoch (default: the last attested one).
        #[arg(long)]
        epoch: Option<u64>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Check an attestation file against a pinned signed manifest (and its chain link with --prev).
    Verify {
        file: PathBuf,
        /// The Datanet's signed manifest (`datanet datanet export`).
        #[arg(long)]
        manifest: PathBuf,
        /// The previous epoch's attestation, to check the hash chain.
        #[arg(long)]
        prev: Option<PathBuf>,
    },
    /// Print (or write) the inclusion proof of a contributor's credit leaf.
    Prove {
        /// The contributor's public key (hex).
        contributor: String,
        #[arg(long)]
        attestation: PathBuf,
        /// Write the proof here (canonical bytes) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check a credit proof against a verified attestation.
    VerifyProof {
        proof: PathBuf,
        #[arg(long)]
        attestation: PathBuf,
        #[arg(long)]
        manifest: PathBuf,
    },
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Reads an attestation file (canonical bytes).
pub fn read_attestation(path: &Path) -> anyhow::Result<Attestation> {
    codec::decode(&read(path)?).with_context(|| format!("{} is not an attestation", path.display()))
}

fn read_manifest(path: &Path) -> anyhow::Result<SignedManifest> {
    SignedManifest::decode_verified(&read(path)?)
        .with_context(|| format!("{} is not a signed manifest", path.display()))
}

/// Verifies `file` against `manifest`; returns the attestation.
fn sealed_opened(r: &crate::sealed::Reveal) -> usize {
    r.parts.iter().map(|p| p.opened.len()).sum()
}

fn sealed_used(r: &crate::sealed::Reveal) -> u32 {
    r.parts.iter().map(|p| crate::sealed::revealed_count(&p.used)).sum()
}

pub fn verify_file(file: &Path, manifest: &Path, prev: Option<&Path>) -> anyhow::Result<Attestation> {
    let m = read_manifest(manifest)?;
    let a = read_attestation(file)?;
    let p = prev.map(read_attestation).transpose()?;
    a.verify(&m.body, p.as_ref()).with_context(|| format!("{} does not verify", file.display()))?;
    Ok(a)
}

/// An attestation's canonical bytes from the running daemon (API) or, without one, the store.
async fn export(g: &Global, datanet: &str, epoch: Option<u64>) -> anyhow::Result<(u64, Vec<u8>)> {
    let dir = g.datadir();
    if let Some(c) = crate::api::ApiClient::from_datadir(&dir) {
        if c.alive().await {
            let mut path = format!("/api/v1/epoch/attestation?datanet={}", urlencode(datanet));
            if let Some(e) = epoch {
                path += &format!("&epoch={e}");
            }
            let v: serde_json::Value = c.get(&path).await?;
            let e = v["epoch"].as_u64().context("daemon answer without epoch")?;
            let bytes = hex::decode(v["hex"].as_str().unwrap_or_default()).context("daemon answer: bad hex")?;
            return Ok((e, bytes));
        }
    }
    let store =
        crate::store::Store::open(&dir).await.with_context(|| format!("opening the store in {}", dir.display()))?;
    let r = (|| {
        let (id, _) = store.resolve_datanet(datanet)?.with_context(|| format!("no Datanet {datanet} here"))?;
        let ledger = crate::store::ledger::Ledger::open(store.db());
        let e = match epoch {
            Some(e) => e,
            None => ledger.head(&id)?.context("no attested epoch in this peer's ledger")?.epoch,
        };
        let a = ledger.attestation(&id, e)?.with_context(|| format!("no attestation of epoch {e} here"))?;
        Ok((e, codec::encode(&a)))
    })();
    store.close().await?;
    r
}

pub(crate) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Runs one attestation command.
pub async fn run(cmd: AttestationCmd, g: &Global) -> anyhow::Result<()> {
    match cmd {
        AttestationCmd::Export { datanet, epoch, out } => {
            let (epoch, bytes) = export(g, &datanet, epoch).await?;
            let a: Attestation = codec::decode(&bytes).context("the ledger returned an unreadable attestation")?;
            std::fs::write(&out, &bytes).with_context(|| format!("writing {}", out.display()))?;
            println!("wrote the attestation of epoch {epoch} ({}) to {}", hex::encode(a.hash()), out.display());
            Ok(())
        }
        AttestationCmd::Verify { file, manifest, prev } => {
            let a = verify_file(&file, &manifest, prev.as_deref())?;
            let h = a.score.header;
            let (win_start, win_end) = read_manifest(&manifest)?.body.epoch_window_ms(h.epoch);
            let total: u64 = a.leaves.iter().map(|l| l.reward).sum();
            if g.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "ok": true, "datanet": h.datanet.to_hex(), "epoch": h.epoch, "view": h.view,
                        "signers": a.score.signer_indexes().len(), "credit_root": h.credit_root.to_hex(),
                        "attestation_hash": hex::encode(a.hash()), "prev_attestation": hex::encode(h.prev_attestation),
                        "contributors": a.leaves.len(), "rewards": total, "reports": a.reports.len(),
                        "window_start_ms": win_start, "window_end_ms": win_end,
                        "inputs": a.inputs.len(), "deferred": a.deferred,
                        "sealed_revealed": a.sealed.as_ref().map(sealed_opened),
                        "sealed_revealed_total": a.sealed.as_ref().map(sealed_used),
                    })
                );
            } else {
                println!("attestation OK: Datanet {} epoch {} (view {})", h.datanet, h.epoch, h.view);
                println!(
                    "  signers        {} of the committee (quorum met, every signature checked)",
                    a.score.signer_indexes().len()
                );
                println!("  hash           {}", hex::encode(a.hash()));
                println!("  previous       {}", hex::encode(h.prev_attestation));
                println!("  credit root    {}", h.credit_root);
                println!("  reports        {}", a.reports.len());
                println!("  contributors   {}, rewards paid {}", a.leaves.len(), total);
                println!("  window         unix ms [{win_start}, {win_end}) (the manifest's epoch {})", h.epoch);
                println!(
                    "  inputs         {} contributions by witnessed priority, {} deferred to a later epoch",
                    a.inputs.len(),
                    a.deferred
                );
                match &a.sealed {
                    Some(r) => println!(
                        "  sealed split   {} records revealed and proven against the manifest's commitment ({} revealed so far); the split is the one the epoch seed chose",
                        sealed_opened(r),
                        sealed_used(r)
                    ),
                    None => println!("  sealed split   none (the Datanet has no sealed evaluation pool)"),
                }
            }
            Ok(())
        }
        AttestationCmd::Prove { contributor, attestation, out } => {
            let key: PeerKey = contributor.parse().context("contributor must be a 64-hex-digit public key")?;
            let a = read_attestation(&attestation)?;
            let p = a.prove(&key).with_context(|| format!("{} has no credit leaf in this attestation", key.short()))?;
            let bytes = codec::encode(&p);
            match out {
                Some(path) => {
                    std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
                    println!(
                        "wrote the proof of {} (credit {}, reward {}) to {}",
                        key.short(),
                        p.leaf.credit,
                        p.leaf.reward,
                        path.display()
                    );
                }
                None => println!("{}", hex::encode(bytes)),
            }
            Ok(())
        }
        AttestationCmd::VerifyProof { proof, attestation, manifest } => {
            let a = verify_file(&attestation, &manifest, None)?;
            let raw = read(&proof)?;
            // Accept the canonical bytes or their hex (what `prove` prints).
            let bytes = hex::decode(String::from_utf8_lossy(&raw).trim()).unwrap_or(raw);
            let p: CreditProof = codec::decode(&bytes).context("not a credit proof")?;
            p.verify(&a.score.header).context("credit proof does not verify")?;
            println!(
                "proof OK: {} earned credit {} and reward {} in epoch {}",
                p.leaf.contributor, p.leaf.credit, p.leaf.reward, a.score.header.epoch
            );
            Ok(())
        }
    }
}
