//! Foundation commands: `datanet datanet create|show|ls`, `contribute`, `contributions`, `export`.
//! These work on the datadir directly; when a daemon holds the datadir, `contribute` goes through
//! its API instead (see `cli::node`).

use super::Global;
use crate::admission;
use crate::identity::Identity;
use crate::ids::DatanetId;
use crate::manifest::Manifest;
use crate::store::Store;
use anyhow::{Context, bail};
use clap::Subcommand;
use std::io::Write;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum DatanetCmd {
    /// Create a Datanet from a manifest file, signed by this peer as founder.
    Create {
        #[arg(long)]
        from: PathBuf,
    },
    /// Show one Datanet's manifest.
    Show { datanet: String },
    /// List the Datanets this peer knows.
    Ls,
    /// Write a Datanet's signed manifest (canonical bytes) to a file, to hand to other peers.
    Export {
        datanet: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Add a signed manifest file (from `datanet datanet export`) to this peer's store.
    Import { file: PathBuf },
    /// The sealed evaluation pool: hand it to committee members, import it, see how much is left.
    Sealed {
        #[command(subcommand)]
        cmd: SealedCmd,
    },
}

#[derive(Subcommand, Debug)]
pub enum SealedCmd {
    /// Write the sealed pool this peer holds (the founder, or a member who imported it) to a
    /// private file, to hand to another committee member.
    Export {
        datanet: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Keep a sealed pool file, after checking it against the manifest's commitment.
    Import { datanet: String, file: PathBuf },
    /// Records still sealed per slice and epochs of splits left (revealed ones are in the ledger).
    Status { datanet: String },
    /// The founder adds the records of another sealed file (the public file's format) to the
    /// pool, drawn from epoch `--from-epoch` on (default: the epoch after the next), and signs the
    /// extension; `sealed export` then hands the grown pool to the members, who `sealed import`
    /// it before that epoch.
    Extend {
        datanet: String,
        file: PathBuf,
        #[arg(long)]
        from_epoch: Option<u64>,
    },
}

pub(crate) async fn open_store(g: &Global) -> anyhow::Result<(Identity, Store)> {
    let dir = g.datadir();
    let id = Identity::load(&dir)?;
    let store = Store::open(&dir).await.with_context(|| format!("opening the store in {}", dir.display()))?;
    Ok((id, store))
}

pub(crate) fn resolve(store: &Store, key: &str) -> anyhow::Result<(DatanetId, Manifest)> {
    Ok(store.require_datanet(key)?)
}

/// `datanet datanet …`
pub async fn run_datanet(cmd: DatanetCmd, g: &Global) -> anyhow::Result<()> {
    if let DatanetCmd::Create { from } = &cmd {
        return create_cmd(from, g).await;
    }
    let (identity, store) = open_store(g).await?;
    let r = match cmd {
        DatanetCmd::Create { .. } => unreachable!("handled above"),
        DatanetCmd::Sealed { cmd } => sealed_cmd(&store, &identity, cmd, g).await,
        DatanetCmd::Show { datanet } => {
            let (id, m) = resolve(&store, &datanet)?;
            if g.json {
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({"id": id.to_hex(), "manifest": m}))?);
            } else {
                print_manifest(&id, &m);
            }
            Ok(())
        }
        DatanetCmd::Export { datanet, out } => {
            let (id, _) = resolve(&store, &datanet)?;
            let signed = store.manifest(&id)?.ok_or_else(|| anyhow::anyhow!("datanet {id} vanished"))?;
            std::fs::write(&out, signed.to_bytes()).with_context(|| format!("writing {}", out.display()))?;
            println!("wrote the signed manifest of {} ({id}) to {}", signed.body.name, out.display());
            Ok(())
        }
        DatanetCmd::Import { file } => {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let signed = crate::manifest::SignedManifest::decode_verified(&bytes)
                .with_context(|| format!("{} is not a valid signed manifest", file.display()))?;
            if signed.signer != signed.body.founder {
                bail!(
                    "{}: signed by {}, but the manifest names founder {}",
                    file.display(),
                    signed.signer.short(),
                    signed.body.founder.short()
                );
            }
            let id = store.put_manifest(&signed).await?;
            println!("imported datanet {} ({id})", signed.body.name);
            Ok(())
        }
        DatanetCmd::Ls => {
            let all = store.manifests()?;
            if g.json {
                let v: Vec<_> = all.iter().map(|(id, m)| serde_json::json!({"id": id.to_hex(), "name": m.body.name, "task": m.body.task.name(), "committee": m.body.committee.members.len()})).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{:<64}  {:<20} {:<9} committee", "id", "name", "task");
                for (id, m) in all {
                    println!(
                        "{}  {:<20} {:<9} {}",
                        id,
                        m.body.name,
                        m.body.task.name(),
                        m.body.committee.members.len()
                    );
                }
            }
            Ok(())
        }
    };
    store.close().await?;
    r
}

/// `datanet datanet create`: through the running daemon when there is one (it stores and joins
/// the new Datanet), else into the store (`datanet run` then joins it on `datanet join <name>`).
async fn create_cmd(from: &std::path::Path, g: &Global) -> anyhow::Result<()> {
    let (created, joined) = match crate::api::ApiClient::from_datadir(&g.datadir()) {
        Some(api) => {
            let path = std::fs::canonicalize(from).with_context(|| format!("reading {}", from.display()))?;
            let c: crate::admission::create::Created =
                api.post("/api/v1/datanets", &crate::api::CreateRequest { path }).await?;
            (c, true)
        }
        None => {
            let (identity, store) = open_store(g).await?;
            let check_seed = |s: &str| crate::net::parse_seed_addr(s).map(|_| ()).map_err(|e| e.to_string());
            let r = crate::admission::create::create_datanet(&store, &identity, from, &check_seed).await;
            store.close().await?;
            (r.map_err(anyhow::Error::msg)?, false)
        }
    };
    if g.json {
        println!(
            "{}",
            serde_json::json!({"id": created.id.to_hex(), "name": created.name, "sealed_records": created.sealed_records, "joined": joined})
        );
        return Ok(());
    }
    println!("created datanet {} ({})", created.name, created.id);
    if joined {
        println!("the running daemon joined it");
    } else {
        println!("no daemon is running here: `datanet run`, then `datanet join {}` to take part", created.name);
    }
    if created.sealed_records > 0 {
        println!(
            "sealed evaluation pool: {} records committed; give it to every committee member with `datanet datanet sealed export {} --out FILE` (keep FILE secret)",
            created.sealed_records, created.name
        );
    }
    Ok(())
}

/// `datanet datanet sealed …`
async fn sealed_cmd(store: &Store, identity: &Identity, cmd: SealedCmd, g: &Global) -> anyhow::Result<()> {
    match cmd {
        SealedCmd::Export { datanet, out } => {
            let (id, m) = resolve(store, &datanet)?;
            let pool = store
                .sealed_pool(&id)?
                .ok_or_else(|| anyhow::anyhow!("this peer does not hold the sealed evaluation pool of {}", m.name))?;
            crate::api::write_private(&out, &crate::codec::encode(&pool))?;
            println!(
                "wrote the sealed evaluation pool of {} ({} records) to {}; hand it only to committee members",
                m.name,
                pool.parts.iter().map(|p| p.records.len()).sum::<usize>(),
                out.display()
            );
            Ok(())
        }
        SealedCmd::Import { datanet, file } => {
            let (id, m) = resolve(store, &datanet)?;
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let pool: crate::sealed::SealedPool = crate::codec::decode(&bytes)
                .with_context(|| format!("{} is not a sealed evaluation pool file", file.display()))?;
            admission::sealed::check_pool(&m, &pool).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            store.put_sealed_pool(&id, &pool).await?;
            println!("imported the sealed evaluation pool of {} (matches the manifest's commitment)", m.name);
            Ok(())
        }
        SealedCmd::Extend { datanet, file, from_epoch } => {
            let (id, m) = resolve(store, &datanet)?;
            if identity.public_key() != m.founder {
                bail!("only the founder of {} ({}) can extend its sealed pool", m.name, m.founder.short());
            }
            let mut pool = store
                .sealed_pool(&id)?
                .ok_or_else(|| anyhow::anyhow!("this peer does not hold the sealed pool of {}", m.name))?;
            let head = crate::store::ledger::Ledger::open(store.db()).head(&id)?.map_or(0, |h| h.epoch);
            let from = from_epoch.unwrap_or(head + 2);
            if from < head + 2 {
                bail!(
                    "--from-epoch {from}: the ledger is at epoch {head}, and epoch {} may be running already; give {} or later",
                    head + 1,
                    head + 2
                );
            }
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let ext = admission::sealed::extend_pool(&m, &mut pool, &bytes, from, &identity.signing_key())
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            store.put_sealed_pool(&id, &pool).await?;
            let added: u32 = ext.body.parts.iter().map(|p| p.count).sum();
            println!(
                "extended the sealed pool of {} by {added} records, drawn from epoch {from} on; hand it to every member again with `datanet datanet sealed export {} --out FILE`",
                m.name, m.name
            );
            Ok(())
        }
        SealedCmd::Status { datanet } => {
            let (id, m) = resolve(store, &datanet)?;
            let s = crate::daemon::epoch::sealed_status(store, &m).map_err(anyhow::Error::msg)?;
            if g.json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else if m.eval.sealed.is_empty() {
                println!("{} has no sealed evaluation pool: utilities are measured on the public file", m.name);
            } else {
                println!("sealed evaluation pool of {} ({id})", m.name);
                println!("held here   {}", if s.held { "yes" } else { "no" });
                for p in &s.parts {
                    println!("slice {:<12} {} of {} records still sealed", p.slice, p.remaining, p.count);
                }
                println!(
                    "epochs left {} (split {} per slice){}",
                    s.epochs_left,
                    m.protocol.sealed_split,
                    if s.low { " — LOW: the founder should extend the pool" } else { "" }
                );
            }
            Ok(())
        }
    }
}

fn print_manifest(id: &DatanetId, m: &Manifest) {
    println!("datanet     {id}");
    println!("name        {}", m.name);
    println!("description {}", m.description);
    println!("task        {:?}", m.task);
    println!("license     {}", m.license);
    println!("founder     {}", m.founder);
    println!(
        "base model  {} {} (seed {})",
        m.base_model.family,
        if m.base_model.preset.is_empty() { m.base_model.hash.to_hex() } else { m.base_model.preset.clone() },
        m.base_model.seed
    );
    println!(
        "recipe      rank {} alpha {} targets {:?} steps {} batch {}",
        m.recipe.lora_rank, m.recipe.lora_alpha, m.recipe.target_modules, m.recipe.steps, m.recipe.batch
    );
    println!(
        "eval        public {} slices {}",
        m.eval.public_hash.short(),
        m.eval.slices.iter().map(|s| format!("{}={}ppm", s.name, s.weight_ppm)).collect::<Vec<_>>().join(" ")
    );
    println!("committee   {} members, quorum {}", m.committee.members.len(), m.committee.quorum());
    for k in &m.committee.members {
        println!("            {k}");
    }
    println!("epoch       {} s, pool {} credits", m.epoch_length_secs, m.reward_pool);
    for s in &m.seeds {
        println!("seed        {s}");
    }
}

/// `datanet contribute <datanet> <file>` against the datadir.
pub async fn contribute(g: &Global, datanet: &str, file: &std::path::Path, skip_invalid: bool) -> anyhow::Result<()> {
    // A running daemon holds the datadir: admit through it, so it also announces the contribution.
    if let Some(api) = crate::api::ApiClient::from_datadir(&g.datadir()) {
        if api.alive().await {
            let path = std::fs::canonicalize(file).with_context(|| format!("cannot read {}", file.display()))?;
            let req = crate::api::ContributeRequest { datanet: datanet.to_string(), path, skip_invalid };
            let ack: serde_json::Value = api.post("/api/v1/contribute", &req).await?;
            println!("{}", if g.json { ack.to_string() } else { format!("acknowledged by the running daemon: {ack}") });
            return Ok(());
        }
    }
    let (identity, store) = open_store(g).await?;
    let r = contribute_with(&store, &identity, datanet, file, skip_invalid, g).await;
    store.close().await?;
    r
}

async fn contribute_with(
    store: &Store,
    identity: &Identity,
    datanet: &str,
    file: &std::path::Path,
    skip_invalid: bool,
    g: &Global,
) -> anyhow::Result<()> {
    let (id, manifest) = resolve(store, datanet)?;
    let len = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    let bar = (!g.json && len > 8 << 20).then(|| {
        let b = indicatif::ProgressBar::new(len);
        b.set_style(
            indicatif::ProgressStyle::with_template("validating {bar:30} {bytes}/{total_bytes} {bytes_per_sec}")
                .expect("static template"),
        );
        b
    });
    let parsed = admission::parse_input(&manifest, file, skip_invalid, bar.as_ref())?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    for e in &parsed.skipped {
        eprintln!("skipped {}: {e}", file.display());
    }
    let local = admission::admit_input(store, identity, &id, parsed, skip_invalid).await?;
    let ack = &local.ack;
    for e in &local.contaminated {
        eprintln!("skipped {}: {e}", file.display());
    }
    let contaminated = local.contaminated.len();
    if g.json {
        println!(
            "{}",
            serde_json::json!({"acknowledged": ack.id.to_hex(), "records": ack.meta.records, "new": ack.meta.new_records, "duplicates": ack.meta.duplicates, "near_duplicates": ack.meta.near_duplicates, "skipped": local.skipped.len(), "contaminated": contaminated, "already_present": ack.already_present})
        );
    } else {
        println!(
            "acknowledged {} — {} records: {} new, {} duplicates, {} near-duplicates{}{}",
            ack.id,
            ack.meta.records,
            ack.meta.new_records,
            ack.meta.duplicates,
            ack.meta.near_duplicates,
            if local.skipped.is_empty() { String::new() } else { format!(", {} invalid skipped", local.skipped.len()) },
            if contaminated == 0 {
                String::new()
            } else {
                format!(", {contaminated} skipped as contamination (copies of evaluation records)")
            }
        );
    }
    Ok(())
}

/// `datanet contributions <datanet>`
pub async fn contributions(g: &Global, datanet: &str) -> anyhow::Result<()> {
    let (_, store) = open_store(g).await?;
    let r = (|| {
        let (id, _) = resolve(&store, datanet)?;
        let list = store.contributions(&id)?;
        if g.json {
            let v: Vec<_> = list.iter().map(|c| serde_json::json!({
                "id": c.id.to_hex(), "contributor": c.signed.body.contributor.to_hex(), "created_ms": c.signed.body.created_ms,
                "records": c.meta.records, "new": c.meta.new_records, "duplicates": c.meta.duplicates,
                "near_duplicates": c.meta.near_duplicates, "bytes": c.signed.body.byte_count, "source": c.meta.source,
            })).collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            println!(
                "{:<16} {:<10} {:>8} {:>8} {:>6} {:>6} source",
                "contribution", "contributor", "records", "new", "dups", "near"
            );
            for c in list {
                println!(
                    "{:<16} {:<10} {:>8} {:>8} {:>6} {:>6} {}",
                    &c.id.to_hex()[..16],
                    c.signed.body.contributor.short(),
                    c.meta.records,
                    c.meta.new_records,
                    c.meta.duplicates,
                    c.meta.near_duplicates,
                    c.meta.source
                );
            }
        }
        anyhow::Ok(())
    })();
    store.close().await?;
    r
}

/// `datanet export <contribution> [--out FILE]`
pub async fn export(g: &Global, contribution: &str, out: Option<&std::path::Path>) -> anyhow::Result<()> {
    let (_, store) = open_store(g).await?;
    let r = async {
        let Some(id) = store.resolve_contribution(contribution)? else {
            bail!("contribution `{contribution}` is not stored here (give its id or a unique prefix; `datanet contributions <datanet>` lists them)")
        };
        let records = store.contribution_records(&id).await?;
        let mut w: Box<dyn Write> = match out {
            Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?)),
            None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
        };
        for r in &records {
            w.write_all(&r.bytes)?;
            w.write_all(b"\n")?;
        }
        w.flush()?;
        if out.is_some() {
            eprintln!("exported {} records of {} (verified against their hashes and Merkle root)", records.len(), id);
        }
        anyhow::Ok(())
    }
    .await;
    store.close().await?;
    r
}
