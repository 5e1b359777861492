//! DatanetBench S15, the evaluation attacks against a sealed evaluation split (issue 14): on the
//! demo's kind of text inputs (a curator of critical records, a volume contributor of common ones),
//! an **eval copier** submits the public evaluation records verbatim and a **paraphraser** submits
//! them reworded (each record under three new phrasings, past the near-duplicate rule). The epoch
//! is measured twice: on the public evaluation file (what a grader without a sealed pool does), and
//! on the epoch's sealed split — a pool of held-out records of the same slices, sealed under the
//! manifest's commitment, the split chosen by the epoch seed with [`crate::sealed::select`], and
//! the input records that copy it dropped as the daemon's plan drops them.
//!
//! Metric: the paraphraser's reward per admitted record over the curator's, on the sealed split
//! (target ≤ 1: fitting the public file pays no better than curating). The value is 99 when the
//! copier got any record admitted or earned anything, or when the curator is not the top earner on
//! the sealed split: those are failures whatever the ratio.

use super::{Scenario, SeedResult, World};
use crate::admission::{self, sealed as asealed};
use serde_json::{Value, json};

/// Phrasings the paraphraser wraps each public evaluation prompt in.
const PARAPHRASES: [&str; 3] =
    ["Here is a question for you, answer it briefly: {}", "Please reply with only the answer. {}", "Quiz time! {}"];

/// The value S15 reports for a failed safety condition.
pub const FAILED: f64 = 99.0;

/// One seed of S15 (see the module docs).
pub(super) async fn run(s: &Scenario, w: &mut World, seed: u64) -> anyhow::Result<SeedResult> {
    let (curated, volume) = (w.extra[0].clone(), w.extra[1].clone());
    let plain = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("slice");
        }
        v
    };
    // The copier: every public evaluation record verbatim, and again with its prompt's spacing
    // doubled (a near copy). Admission refuses the whole file: every record is contamination.
    let mut copies: Vec<Value> = w.eval.iter().map(plain).collect();
    let near: Vec<Value> = copies
        .iter()
        .map(|v| {
            let mut n = v.clone();
            n["prompt"] = json!(v["prompt"].as_str().unwrap_or_default().replace(' ', "  "));
            n
        })
        .collect();
    copies.extend(near);
    let copier_admitted = match w.admit(&[("copier".to_string(), copies.clone())], &[0]).await {
        Ok(a) => a.records.len(),
        Err(e) if e.to_string().contains("contamination") => 0,
        Err(e) => return Err(e),
    };
    let paraphrases: Vec<Value> = w
        .eval
        .iter()
        .map(plain)
        .flat_map(|v| {
            PARAPHRASES.iter().map(move |t| {
                let mut p = v.clone();
                p["prompt"] = json!(t.replace("{}", v["prompt"].as_str().unwrap_or_default()));
                p
            })
        })
        .collect();
    let c = vec![
        ("curator".to_string(), curated.clone()),
        ("volume".to_string(), volume.clone()),
        ("paraphraser".to_string(), paraphrases.clone()),
    ];
    let admitted = w.admit(&c, &[0, 1, 2]).await?;
    let owned = |name: &str| {
        admitted
            .records
            .iter()
            .filter(|r| r.owners.iter().any(|k| admitted.names.get(k).is_some_and(|n| n == name)))
            .count()
    };
    let (para_admitted, cur_admitted) = (owned("paraphraser"), owned("curator"));

    // Measured on the public file: what the paraphrase is fitted to.
    let public = w.measure(&admitted)?;

    // The sealed pool: held-out records of both slices, none equal to a record anyone submitted.
    let (manifest, blobs) = super::manifest_from(&w.manifest_toml, &w.eval_jsonl)?;
    let taken: std::collections::BTreeSet<String> =
        curated.iter().chain(&volume).chain(&copies).map(|v| v["prompt"].to_string()).collect();
    let mut pool_jsonl = String::new();
    for (kind, slice, salt) in [("critical", "critical", 101), ("common", "common", 202)] {
        let mut n = 0;
        for v in crate::testnet::scenario::generate(
            kind,
            20 * s.sealed_records as usize,
            seed.wrapping_mul(1000).wrapping_add(salt),
        )? {
            if n == s.sealed_records || taken.contains(&v["prompt"].to_string()) {
                continue;
            }
            let mut v = v;
            v["slice"] = json!(slice);
            pool_jsonl.push_str(&format!("{v}\n"));
            n += 1;
        }
    }
    let key = *blake3::hash(format!("datanet-bench/S15/{seed}").as_bytes()).as_bytes();
    let mut m = manifest;
    let pool = asealed::seal_pool(&m, pool_jsonl.as_bytes(), key)?;
    m.eval.sealed = pool.commitment();
    let before = crate::sealed::fresh(&m.eval.sealed);
    let split = crate::sealed::select(&w.epoch_seed, &m.eval.sealed, &before, s.sealed_split);
    let reveal = pool.reveal(&[], &before, &split);
    let opened = asealed::opened_records(&m, &reveal)?;
    let public_eval = admission::parse_eval(&m, &blobs.public)?;
    let measured_on = asealed::measured_eval(&public_eval, &opened);
    let sealed_admitted = super::Admitted {
        records: crate::daemon::epoch::uncontaminated(&m, admitted.records.clone(), &public_eval, &[], &opened, 1),
        names: admitted.names.clone(),
    };
    let dropped = admitted.records.len() - sealed_admitted.records.len();
    w.job.set_eval(&m.eval.slices, &measured_on)?;
    // Utilities measured on the public file are not utilities on the split: a fresh cache.
    w.cache = crate::measure::UtilityCache::new();
    let sealed = w.measure(&sealed_admitted)?;

    let per = |o: &super::Outcome, name: &str, n: usize| o.reward(name) / n.max(1) as f64;
    let ratio = per(&sealed, "paraphraser", para_admitted) / per(&sealed, "curator", cur_admitted).max(1e-9);
    let ratio_public = per(&public, "paraphraser", para_admitted) / per(&public, "curator", cur_admitted).max(1e-9);
    let top = |o: &super::Outcome| o.rewards.iter().all(|(k, &v)| k == "curator" || (v as f64) < o.reward("curator"));
    let copier_reward = public.reward("copier") + sealed.reward("copier");
    let ok = copier_admitted == 0 && copier_reward == 0.0 && top(&sealed);
    let extra = vec![
        ("copier_records_admitted".into(), copier_admitted as f64),
        ("copier_reward".into(), copier_reward),
        ("paraphraser_records_submitted".into(), paraphrases.len() as f64),
        ("paraphraser_records_admitted".into(), para_admitted as f64),
        ("curator_records_admitted".into(), cur_admitted as f64),
        ("curator_reward_sealed".into(), sealed.reward("curator")),
        ("paraphraser_reward_sealed".into(), sealed.reward("paraphraser")),
        ("volume_reward_sealed".into(), sealed.reward("volume")),
        ("curator_reward_public".into(), public.reward("curator")),
        ("paraphraser_reward_public".into(), public.reward("paraphraser")),
        ("paraphraser_vs_curator_public".into(), ratio_public),
        ("curator_top_sealed".into(), if top(&sealed) { 1.0 } else { 0.0 }),
        ("sealed_split_records".into(), opened.len() as f64),
        ("inputs_dropped_as_split_copies".into(), dropped as f64),
    ];
    Ok(SeedResult { metric: if ok { ratio } else { FAILED }, extra })
}
