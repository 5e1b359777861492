//! Scenario files (`testnet/scenarios/*.toml`): scripted steps run against a local testnet through
//! the same CLI a volunteer uses, with checks on the outcome.
//!
//! ```toml
//! name = "demo"
//! peers = 5
//! manifest = "../../config/datanets/instruct.toml"   # relative to the scenario file
//! [[step]]
//! action = "contribute"  # contribute | wait-replicated | train | epoch | kill | stop | restart | down | check | verify
//! peer = 1
//! data = { generate = "common", count = 3000, seed = 1 }   # or { file = "x.jsonl" } or { copy_of = 1, part = 0, parts = 2 }
//! ```

use super::Testnet;
use anyhow::{Context, bail};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    pub peers: usize,
    pub manifest: PathBuf,
    #[serde(default, rename = "step")]
    pub steps: Vec<Step>,
}

/// Where a contribution's records come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// A built-in generator: `common` or `critical` (instruct), see [`generate`].
    pub generate: Option<String>,
    #[serde(default)]
    pub count: usize,
    #[serde(default)]
    pub seed: u64,
    /// A file, relative to the scenario file.
    pub file: Option<PathBuf>,
    /// Copy part `part` of `parts` of what peer `copy_of` contributed.
    pub copy_of: Option<usize>,
    #[serde(default)]
    pub part: usize,
    #[serde(default = "one")]
    pub parts: usize,
}

fn one() -> usize {
    1
}

/// One scripted step.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub action: String,
    #[serde(default)]
    pub peer: usize,
    pub data: Option<DataSpec>,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// `check`: the peer that must earn the most.
    pub top_earner: Option<usize>,
    /// `check`: peers that must earn nothing.
    #[serde(default)]
    pub zero_earners: Vec<usize>,
    /// A label printed with the step.
    #[serde(default)]
    pub note: String,
}

fn default_timeout() -> u64 {
    300
}

impl Scenario {
    /// Reads and checks a scenario file (unknown keys and bad steps are named).
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let s: Scenario = toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
        for (i, st) in s.steps.iter().enumerate() {
            let known = [
                "contribute",
                "wait-replicated",
                "train",
                "epoch",
                "kill",
                "restart",
                "stop",
                "down",
                "check",
                "verify",
            ];
            if !known.contains(&st.action.as_str()) {
                bail!("{}: step[{i}].action `{}` is not one of {}", path.display(), st.action, known.join(", "));
            }
            if st.peer >= s.peers {
                bail!("{}: step[{i}].peer {} but the scenario has {} peers", path.display(), st.peer, s.peers);
            }
            if st.action == "contribute" && st.data.is_none() {
                bail!("{}: step[{i}] contribute needs `data`", path.display());
            }
        }
        Ok(s)
    }
}

const THINGS: &[(&str, &str)] = &[
    ("apple", "red"),
    ("banana", "yellow"),
    ("grass", "green"),
    ("sky", "blue"),
    ("coal", "black"),
    ("snow", "white"),
    ("orange", "orange"),
    ("plum", "purple"),
];

/// Built-in instruct data: `common` asks the colors of a few things in many redundant phrasings;
/// `critical` teaches negating integers, the slice the base model gets wrong.
pub fn generate(kind: &str, count: usize, seed: u64) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let r = next();
        let v = match kind {
            "common" => {
                let (thing, color) = THINGS[(r % THINGS.len() as u64) as usize];
                let templates = [
                    "What color is {}?",
                    "What colour is {}?",
                    "Name the color of {}.",
                    "Which color does {} have?",
                    "Tell me the color of {}.",
                ];
                let t = templates[((r >> 8) % templates.len() as u64) as usize].replace("{}", thing);
                serde_json::json!({"prompt": format!("{t} (#{i})"), "completion": color})
            }
            "critical" => {
                // Integers outside the evaluation set's 2..7, so the slice is learned, not leaked.
                let a = 10 + (r % 990) as i64;
                serde_json::json!({"prompt": format!("Negate {a}."), "completion": format!("{}", -a)})
            }
            other => bail!("unknown generator `{other}` (expected common or critical)"),
        };
        out.push(v);
    }
    Ok(out)
}

fn write_jsonl(path: &Path, records: &[serde_json::Value]) -> anyhow::Result<()> {
    let mut s = String::new();
    for r in records {
        s.push_str(&r.to_string());
        s.push('\n');
    }
    std::fs::write(path, s).with_context(|| format!("writing {}", path.display()))
}

fn datanet_cmd(peer: &Path, args: &[&str]) -> anyhow::Result<String> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe).arg("--datadir").arg(peer).args(args).output()?;
    if !out.status.success() {
        bail!("datanet {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a scenario; prints progress; fails on the first failed step or check.
pub async fn run(path: &Path, dir: &Path) -> anyhow::Result<()> {
    let sc = Scenario::read(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let started = Instant::now();
    eprintln!("[{:>5.1}s] scenario {}: starting {} peers in {}", 0.0, sc.name, sc.peers, dir.display());
    let t = super::up(dir, sc.peers, &base.join(&sc.manifest)).await?;
    let mut contributed: BTreeMap<usize, Vec<serde_json::Value>> = BTreeMap::new();
    let mut acknowledged: BTreeSet<String> = BTreeSet::new();
    let mut running: Vec<usize> = (0..sc.peers).collect();
    let result = async {
        for (i, st) in sc.steps.iter().enumerate() {
            let el = started.elapsed().as_secs_f64();
            eprintln!("[{el:>5.1}s] step {i}: {} peer {} {}", st.action, st.peer, st.note);
            step(&t, st, base, &mut contributed, &mut acknowledged, &mut running)
                .await
                .with_context(|| format!("step {i} ({})", st.action))?;
        }
        anyhow::Ok(())
    }
    .await;
    eprintln!(
        "[{:>5.1}s] scenario {}: {}",
        started.elapsed().as_secs_f64(),
        sc.name,
        if result.is_ok() { "passed" } else { "FAILED" }
    );
    result
}

async fn step(
    t: &Testnet,
    st: &Step,
    base: &Path,
    contributed: &mut BTreeMap<usize, Vec<serde_json::Value>>,
    acknowledged: &mut BTreeSet<String>,
    running: &mut Vec<usize>,
) -> anyhow::Result<()> {
    let peer = &t.peers[st.peer];
    let name = t.datanet_name.as_str();
    match st.action.as_str() {
        "contribute" => {
            let spec = st.data.as_ref().expect("checked in read");
            let file = t.dir.join(format!(
                "contribution-peer{}-{}.jsonl",
                st.peer,
                contributed.get(&st.peer).map_or(0, Vec::len)
            ));
            let records = if let Some(g) = &spec.generate {
                generate(g, spec.count, spec.seed)?
            } else if let Some(f) = &spec.file {
                let text = std::fs::read_to_string(base.join(f))?;
                text.lines().filter(|l| !l.trim().is_empty()).map(serde_json::from_str).collect::<Result<_, _>>()?
            } else if let Some(src) = spec.copy_of {
                let all =
                    contributed.get(&src).with_context(|| format!("peer {src} has contributed nothing to copy"))?;
                let per = all.len().div_ceil(spec.parts.max(1));
                all.iter().skip(spec.part * per).take(per).cloned().collect()
            } else {
                bail!("data needs generate, file or copy_of");
            };
            write_jsonl(&file, &records)?;
            let c = super::client(t, st.peer, Duration::from_secs(10)).await?;
            let req = crate::api::ContributeRequest {
                datanet: t.datanet.to_hex(),
                path: std::fs::canonicalize(&file)?,
                skip_invalid: false,
            };
            let ack: serde_json::Value = c.post("/api/v1/contribute", &req).await?;
            eprintln!("          acknowledged {}", ack);
            acknowledged.insert(ack["id"].as_str().context("acknowledgement without an id")?.to_string());
            contributed.entry(st.peer).or_default().extend(records);
        }
        "wait-replicated" => {
            let deadline = Instant::now() + Duration::from_secs(st.timeout_secs);
            // Every contribution acknowledged so far in the scenario (and whatever the peer holds besides).
            let held =
                super::status_of(t, st.peer).await?.datanets.iter().map(|d| d.contributions.len()).sum::<usize>();
            let want = held.max(acknowledged.len());
            for &i in running.iter() {
                loop {
                    let have =
                        super::status_of(t, i).await?.datanets.iter().map(|d| d.contributions.len()).sum::<usize>();
                    if have >= want {
                        break;
                    }
                    if Instant::now() > deadline {
                        bail!("peer {i} holds {have} of {want} contributions after {}s", st.timeout_secs);
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
            eprintln!("          all {} running peers hold {want} contributions", running.len());
        }
        "train" => {
            // The daemon holds the datadir: stop it, train an adapter on the replicated records
            // (signed lineage into the blob store), start it again.
            super::stop_peer(t, st.peer, false)?;
            let out = datanet_cmd(peer, &["train", name]);
            super::start_peer(t, st.peer)?;
            super::client(t, st.peer, Duration::from_secs(60)).await?;
            eprint!("{}", out?);
        }
        "epoch" => {
            let out = datanet_cmd(peer, &["epoch", "run", name, "--timeout-secs", &st.timeout_secs.to_string()])?;
            eprint!("{out}");
        }
        "down" => {
            for &i in running.iter() {
                super::stop_peer(t, i, false)?;
            }
            running.clear();
        }
        "verify" => {
            // Offline: only the attestation file and the manifest, no daemon, no network.
            let att = t.dir.join("attestation.bin");
            let man = t.dir.join("manifest.bin");
            datanet_cmd(peer, &["attestation", "export", name, "--out", att.to_str().unwrap_or_default()])?;
            datanet_cmd(peer, &["datanet", "export", name, "--out", man.to_str().unwrap_or_default()])?;
            let exe = std::env::current_exe()?;
            let out =
                Command::new(exe).args(["attestation", "verify"]).arg(&att).arg("--manifest").arg(&man).output()?;
            eprint!("{}", String::from_utf8_lossy(&out.stdout));
            if !out.status.success() {
                bail!("attestation verification failed: {}", String::from_utf8_lossy(&out.stderr).trim());
            }
        }
        "kill" | "stop" => {
            super::stop_peer(t, st.peer, st.action == "kill")?;
            running.retain(|p| *p != st.peer);
        }
        "restart" => {
            super::start_peer(t, st.peer)?;
            super::client(t, st.peer, Duration::from_secs(60)).await?;
            running.push(st.peer);
            running.sort();
        }
        "check" => {
            // The peer's ledger: through its API while it runs, from its store once stopped.
            eprint!("{}", datanet_cmd(peer, &["rewards", name])?);
            let out = datanet_cmd(peer, &["rewards", name, "--json"])?;
            let v: serde_json::Value = serde_json::from_str(&out).context("rewards --json")?;
            check_rewards(t, &v, st)?;
        }
        other => bail!("unknown action {other}"),
    }
    Ok(())
}

fn check_rewards(t: &Testnet, v: &serde_json::Value, st: &Step) -> anyhow::Result<()> {
    let key_of = |i: usize| -> anyhow::Result<String> {
        Ok(crate::identity::Identity::load(&t.peers[i])?.public_key().to_hex())
    };
    let reward_of = |k: &str| -> u64 {
        v.get("totals")
            .and_then(|c| c.as_array())
            .and_then(|a| a.iter().find(|e| e["contributor"].as_str() == Some(k)))
            .and_then(|e| e["reward"].as_str().and_then(|r| r.parse().ok()).or_else(|| e["reward"].as_u64()))
            .unwrap_or(0)
    };
    if v.get("head_epoch").is_none_or(|h| h.is_null()) {
        bail!("no attested epoch in the ledger");
    }
    if let Some(top) = st.top_earner {
        let k = key_of(top)?;
        let r = reward_of(&k);
        for i in 0..t.peers.len() {
            if i != top && reward_of(&key_of(i)?) >= r {
                bail!("peer {top} should earn the most ({r}), but peer {i} earns {}", reward_of(&key_of(i)?));
            }
        }
    }
    for &z in &st.zero_earners {
        let r = reward_of(&key_of(z)?);
        if r != 0 {
            bail!("peer {z} should earn nothing, but earns {r}");
        }
    }
    Ok(())
}
