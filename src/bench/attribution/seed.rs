//! One seed of a scenario: runs its variants (honest, duplicated, split into sybils, …) in the
//! seed's world and computes the headline metric and the extra figures.

use super::metrics::{screen_quality, spearman};
use super::records::{flip, junk, record_parts, round_sig};
use super::scenario::Scenario;
use super::world::World;
use super::{flood, sealed_eval, tabular_value};
use crate::identity::Identity;
use crate::manifest::TaskKind;
use crate::measure;
use anyhow::{Context, bail};
use rand::Rng;
use serde_json::Value;
use std::collections::BTreeMap;

fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 { if a == 0.0 { 1.0 } else { f64::INFINITY } } else { a / b }
}

fn named(slices: &[Vec<Value>]) -> Vec<(String, Vec<Value>)> {
    slices.iter().enumerate().map(|(i, s)| (format!("c{i}"), s.clone())).collect()
}

/// One seed's figures: the headline metric and extra named figures.
pub(super) struct SeedResult {
    pub(super) metric: f64,
    pub(super) extra: Vec<(String, f64)>,
}

/// The manipulator c0's reward in the honest epoch; an error when it is 0, since no gain can be
/// measured against nothing (the scenario is then not well-posed: too few jobs for the noise floor,
/// or a base that leaves nothing to learn).
async fn honest_reward(s: &Scenario, w: &mut World, honest: &[(String, Vec<Value>)]) -> anyhow::Result<f64> {
    let r = w.run(honest).await?.reward("c0");
    if r == 0.0 {
        bail!(
            "{}: contributor c0 earned nothing in the honest epoch, so a manipulation gain cannot be measured; raise `jobs` or lower `base_records`",
            s.scenario
        );
    }
    Ok(r)
}

pub(super) async fn run_seed(s: &Scenario, w: &mut World) -> anyhow::Result<SeedResult> {
    let honest = named(&w.slices);
    let mut extra = Vec::new();
    let metric = match s.scenario.as_str() {
        "S1" => {
            let out = w.run(&honest).await?;
            let plan = &out.measured.plan;
            let m = plan.units.len();
            if m > 10 {
                bail!("S1 formed {m} units; exact Banzhaf needs at most 10 (raise unit_records_target)");
            }
            if 1u64 << m <= plan.job_count() as u64 {
                bail!(
                    "S1 formed {m} units: its {} jobs would cover all 2^{m} coalitions; lower `jobs` or raise the units",
                    plan.job_count()
                );
            }
            // Exact Banzhaf over all 2^M coalitions with the same capped job construction (and the
            // same cache, so coalitions the epoch already trained are not trained again).
            let seed = crate::attribution::jobs::training_seed(w.epoch_seed, w.recipe_seed);
            let cap = plan.params.records_per_unit_max as usize;
            let mut u = vec![0i64; 1 << m];
            for (mask, slot) in u.iter_mut().enumerate() {
                let hashes: Vec<crate::ids::RecordHash> = plan
                    .units
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask >> i & 1 == 1)
                    .flat_map(|(_, unit)| unit.records.iter().take(cap).copied())
                    .collect();
                let key = measure::cache_key(seed, &hashes);
                *slot = match w.cache.get(&key) {
                    Some(&v) => v,
                    None => {
                        let values: Vec<Value> = hashes.iter().map(|h| out.values[h].clone()).collect();
                        let v = w.job.utility_seeded(&values, seed)?;
                        w.cache.insert(key, v);
                        v
                    }
                };
            }
            let exact: Vec<f64> = (0..m)
                .map(|i| {
                    let (mut d, n) = (0f64, (1usize << m) / 2);
                    for mask in 0..(1usize << m) {
                        if mask >> i & 1 == 0 {
                            d += (u[mask | 1 << i] - u[mask]) as f64;
                        }
                    }
                    d / n as f64
                })
                .collect();
            let msr: Vec<f64> = out.measured.scores.unit_values.iter().map(|&v| v as f64).collect();
            // The same estimator on T independently drawn coalitions (the design before orthogonal
            // blocks), read from the exact table: what the blocks gain.
            let independent: Vec<Vec<bool>> =
                (0..plan.job_count()).map(|j| crate::attribution::jobs::coalition(w.epoch_seed, m as u32, j)).collect();
            let table: Vec<i64> = independent
                .iter()
                .map(|c| u[c.iter().enumerate().filter(|(_, b)| **b).map(|(i, _)| 1usize << i).sum::<usize>()])
                .collect();
            let plain = crate::attribution::value::msr_banzhaf(&independent, &table, m);
            extra.push((
                "spearman_independent_draws".into(),
                spearman(&plain.iter().map(|&v| v as f64).collect::<Vec<_>>(), &exact),
            ));
            extra.push(("units".into(), m as f64));
            extra.push(("jobs".into(), plan.job_count() as f64));
            spearman(&msr, &exact)
        }
        "S2" => {
            let contributions =
                vec![("curated".to_string(), w.extra[0].clone()), ("volume".to_string(), w.extra[1].clone())];
            let out = w.run(&contributions).await?;
            extra.push(("curated_reward".into(), out.reward("curated")));
            extra.push(("volume_reward".into(), out.reward("volume")));
            extra.push(("units".into(), out.measured.plan.units.len() as f64));
            extra.push(("admitted".into(), out.admitted as f64));
            let curated_key = Identity::from_seed(*blake3::hash(b"datanet-bench/curated").as_bytes()).public_key();
            let (plan, sc) = (&out.measured.plan, &out.measured.scores);
            let (mut cu, mut cphi, mut cse, mut vmax, mut vse) = (0f64, 0f64, 0f64, 0f64, 0f64);
            for (i, u) in plan.units.iter().enumerate() {
                let (phi, se) = (sc.unit_values[i] as f64, sc.unit_errors[i] as f64);
                if u.shares.iter().any(|(k, _)| *k == curated_key) {
                    cu += 1.0;
                    cphi += phi;
                    cse = cse.max(se);
                } else if phi > vmax {
                    (vmax, vse) = (phi, se);
                }
            }
            extra.push(("curated_units".into(), cu));
            extra.push(("curated_phi".into(), cphi));
            extra.push(("curated_max_se".into(), cse));
            extra.push(("volume_max_phi".into(), vmax));
            extra.push(("volume_max_phi_se".into(), vse));
            let u = &out.measured.utilities;
            extra.push(("utility_min".into(), u.iter().copied().min().unwrap_or(0) as f64));
            extra.push(("utility_max".into(), u.iter().copied().max().unwrap_or(0) as f64));
            extra.push(("screened".into(), plan.screened.len() as f64));
            // Well-posedness: the base gets the critical slice wrong, and the curated records alone
            // (one job's recipe and seed) teach it.
            let slice = |r: &crate::trainer::eval::EvalReport, name: &str| {
                r.slices.iter().find(|x| x.name == name).map_or((0.0, 0.0), |x| (x.loss, x.accuracy))
            };
            let critical = |r: &crate::trainer::eval::EvalReport| slice(r, "critical");
            let (base_loss, base_acc) = critical(w.job.base_report());
            extra.push(("base_common_loss".into(), slice(w.job.base_report(), "common").0));
            let seed = crate::attribution::jobs::training_seed(w.epoch_seed, w.recipe_seed);
            let (_, alone) = w.job.evaluate_seeded(&w.extra[0], seed)?;
            let (alone_loss, alone_acc) = critical(&alone);
            extra.push(("base_critical_loss".into(), base_loss));
            extra.push(("base_critical_accuracy".into(), base_acc));
            extra.push(("curated_alone_critical_loss".into(), alone_loss));
            extra.push(("curated_alone_critical_accuracy".into(), alone_acc));
            extra.push(("train_secs".into(), out.measured.train_secs));
            // Capped so a volume contributor paid nothing still averages to a finite figure.
            ratio(out.reward("curated"), out.reward("volume")).min(1000.0)
        }
        "S3" => {
            let base = honest_reward(s, w, &honest).await?;
            extra.push(("honest_reward".into(), base));
            let mut worst: f64 = 0.0;
            for &k in &s.copies {
                let mut c = honest.clone();
                for _ in 1..k {
                    c.push(("c0".into(), w.slices[0].clone()));
                }
                c.push(("c0".into(), w.slices[1].clone()));
                let g = ratio(w.run(&c).await?.reward("c0"), base);
                extra.push((format!("gain_x{k}"), g));
                worst = worst.max(g);
            }
            worst
        }
        "S13" => {
            // Backdating copier: c1's records re-submitted by a fresh identity that is admitted
            // FIRST here (earlier local admission, and any `created_ms` it likes) but witnessed
            // LATER by the committee. Value: the share of c1's honest reward c1 keeps, or 0 when
            // the copier earns anything at all.
            let base = w.run(&honest).await?.reward("c1");
            if base == 0.0 {
                bail!("S13: contributor c1 earned nothing in the honest epoch; raise `jobs` or lower `base_records`");
            }
            extra.push(("victim_honest_reward".into(), base));
            let mut c = vec![("copier".to_string(), w.slices[1].clone())];
            c.extend(honest.iter().cloned());
            let mut at: Vec<u64> = vec![1_000_000];
            at.extend(0..honest.len() as u64);
            let out = w.run_at(&c, &at).await?;
            let (kept, copier) = (out.reward("c1") / base, out.reward("copier"));
            extra.push(("copier_reward".into(), copier));
            extra.push(("victim_kept".into(), kept));
            if copier > 0.0 { 0.0 } else { kept }
        }
        "S15" => {
            let seed = u64::from_le_bytes(w.epoch_seed[..8].try_into().expect("8 bytes"));
            let r = sealed_eval::run(s, w, seed).await?;
            extra.extend(r.extra);
            r.metric
        }
        "S14" => {
            // Id-grinding flood: `flood` junk contributions from fresh identities, witnessed after
            // the honest ones ([`flood::flood_freeze`]: ground ids, colluding members, a bare
            // quorum). The real freeze picks the input set; its honest and junk contributions are
            // admitted at their certified priorities and measured. Value: the honest
            // contributions' total reward with the flood over their total without it.
            let seed = u64::from_le_bytes(w.epoch_seed[..8].try_into().expect("8 bytes"));
            let n = s.committee as usize;
            let calm = flood::flood_freeze(honest.len(), 0, n, seed);
            let calm_p = calm.priorities();
            let calm_at: Vec<u64> = calm
                .honest
                .iter()
                .map(|c| calm_p.get(c).copied())
                .collect::<Option<_>>()
                .context("S14: an honest contribution has no priority even without the flood")?;
            let base = w.run_at(&honest, &calm_at).await?;
            let names: Vec<&str> = honest.iter().map(|x| x.0.as_str()).collect();
            let last = *names.last().context("S14 needs honest contributors")?;
            let (base_total, base_last) = (names.iter().map(|k| base.reward(k)).sum::<f64>(), base.reward(last));
            if base_total == 0.0 {
                bail!(
                    "S14: the honest contributions earned nothing without the flood; raise `jobs` or lower `base_records`"
                );
            }
            let ff = flood::flood_freeze(honest.len(), s.flood as usize, n, seed);
            let p = ff.priorities();
            let mut c = Vec::new();
            let mut at = Vec::new();
            for (i, id) in ff.honest.iter().enumerate() {
                if let Some(&t) = p.get(id) {
                    c.push(honest[i].clone());
                    at.push(t);
                }
            }
            let classes = match w.task {
                TaskKind::Tabular { classes, .. } => classes,
                _ => 2,
            };
            let pool: Vec<(Vec<f64>, u32)> = w.slices.iter().flatten().map(record_parts).collect();
            let mut junk_records = 0usize;
            for (j, id) in ff.junk.iter().enumerate() {
                if let Some(&t) = p.get(id) {
                    let records = junk(&pool, classes, s.junk_records, seed, j);
                    junk_records += records.len();
                    c.push((format!("junk{j}"), records));
                    at.push(t);
                }
            }
            let started = std::time::Instant::now();
            let out = w.run_at(&c, &at).await?;
            let total: f64 = names.iter().map(|k| out.reward(k)).sum();
            extra.push(("honest_reward_without_flood".into(), base_total));
            extra.push(("honest_reward_with_flood".into(), total));
            extra.push(("last_honest_kept".into(), ratio(out.reward(last), base_last)));
            extra.push(("junk_reward".into(), out.prefix_reward("junk")));
            extra.push(("honest_in_input_fraction".into(), ff.honest_in() as f64 / honest.len() as f64));
            extra.push(("input_items".into(), ff.frozen.items.len() as f64));
            extra.push(("junk_in_input".into(), (ff.frozen.items.len() - ff.honest_in()) as f64));
            extra.push(("junk_before_last_honest".into(), ff.junk_before_last_honest() as f64));
            extra.push(("deferred".into(), ff.frozen.deferred as f64));
            extra.push(("junk_records_admitted".into(), junk_records as f64));
            extra.push(("units".into(), out.measured.plan.units.len() as f64));
            extra.push(("units_without_flood".into(), base.measured.plan.units.len() as f64));
            extra.push(("jobs".into(), out.measured.plan.job_count() as f64));
            extra.push(("screened".into(), out.measured.plan.screened.len() as f64));
            extra.push(("retained".into(), out.measured.scores.retained as f64));
            extra.push(("flood_epoch_secs".into(), started.elapsed().as_secs_f64()));
            // Where the junk's credit comes from: units shared with honest records (the unit's
            // value is split by record weight between its owners) or units of junk alone.
            let honest_keys: std::collections::BTreeSet<crate::ids::PeerKey> = names
                .iter()
                .map(|k| {
                    Identity::from_seed(*blake3::hash(format!("datanet-bench/{k}").as_bytes()).as_bytes()).public_key()
                })
                .collect();
            let (plan, sc) = (&out.measured.plan, &out.measured.scores);
            let credited =
                crate::attribution::value::above_noise(&sc.unit_values, &sc.unit_errors, plan.params.noise_floor_milli);
            let (mut mixed, mut mixed_credited, mut junk_only_credited) = (0f64, 0f64, 0f64);
            let (mut junk_mixed, mut junk_alone, mut honest_records_mixed) = (0f64, 0f64, 0f64);
            for (u, &v) in plan.units.iter().zip(&credited) {
                let total_w = u.weight_total().max(1) as f64;
                let hw: f64 = u.shares.iter().filter(|(k, _)| honest_keys.contains(k)).map(|x| x.1 as f64).sum();
                let jw = total_w - hw;
                let v = v.max(0) as f64;
                if hw > 0.0 && jw > 0.0 {
                    mixed += 1.0;
                    honest_records_mixed += hw / total_w * u.records.len() as f64;
                    if v > 0.0 {
                        mixed_credited += 1.0;
                        junk_mixed += v * jw / total_w;
                    }
                } else if jw > 0.0 && v > 0.0 {
                    junk_only_credited += 1.0;
                    junk_alone += v;
                }
            }
            extra.push(("units_mixed".into(), mixed));
            extra.push(("units_mixed_credited".into(), mixed_credited));
            extra.push(("units_junk_only_credited".into(), junk_only_credited));
            extra.push(("honest_records_in_mixed_units".into(), honest_records_mixed));
            extra.push((
                "junk_credit_from_mixed_fraction".into(),
                if junk_mixed + junk_alone == 0.0 { 0.0 } else { junk_mixed / (junk_mixed + junk_alone) },
            ));
            total / base_total
        }
        "S4" => {
            let base = honest_reward(s, w, &honest).await?;
            extra.push(("honest_reward".into(), base));
            let mut c = honest.clone();
            let jit = s.jitter;
            for src in [0usize, 1] {
                let copies: Vec<Value> = w.slices[src]
                    .iter()
                    .map(|v| {
                        let (xs, l) = record_parts(v);
                        let ys: Vec<f64> =
                            xs.iter().map(|&x| round_sig(x * (1.0 + w.rng.gen_range(-jit..jit)))).collect();
                        tabular_value(&ys, l)
                    })
                    .collect();
                c.push(("c0".into(), copies));
            }
            let out = w.run(&c).await?;
            extra.push((
                "near_duplicates_caught".into(),
                out.measured.plan.contributors.iter().map(|x| x.near_duplicates as f64).sum(),
            ));
            ratio(out.reward("c0"), base)
        }
        "S5" => {
            let base = honest_reward(s, w, &honest).await?;
            extra.push(("honest_reward".into(), base));
            let mut worst: f64 = 0.0;
            for &k in &s.sybil {
                let mut c: Vec<(String, Vec<Value>)> = (0..k).map(|j| (format!("sybil{j}"), Vec::new())).collect();
                for (i, r) in w.slices[0].iter().enumerate() {
                    c[i % k as usize].1.push(r.clone());
                }
                c.extend(honest.iter().skip(1).cloned());
                // The identities' contributions are witnessed when c0's would have been: priority 0;
                // the others keep theirs (1, 2, …).
                let at: Vec<u64> = (0..c.len()).map(|i| (i as u64 + 1).saturating_sub(k as u64)).collect();
                let g = ratio(w.run_at(&c, &at).await?.prefix_reward("sybil"), base);
                extra.push((format!("gain_k{k}"), g));
                worst = worst.max(g);
            }
            worst
        }
        "S6" => {
            let mut slices = w.slices.clone();
            let mut flipped = Vec::new();
            let classes = match w.task {
                TaskKind::Tabular { classes, .. } => classes,
                _ => 2,
            };
            for sl in slices.iter_mut() {
                flipped.extend(flip(sl, s.flip_rate, classes, &mut w.rng));
            }
            // The screen needs no training: plan only.
            let all: Vec<Value> = slices.iter().flatten().cloned().collect();
            let q = screen_quality(w, &all, &flipped).await?;
            let baseline = q.knn_f1_kmeans.max(q.knn_f1_negative);
            extra.push(("kmeans_f1".into(), q.f1));
            extra.push(("knn_shapley_f1".into(), baseline));
            extra.push(("knn_shapley_f1_kmeans".into(), q.knn_f1_kmeans));
            extra.push(("knn_shapley_f1_negative".into(), q.knn_f1_negative));
            extra.push(("knn_shapley_auroc".into(), q.knn_auroc));
            extra.push(("screen_f1_negative".into(), q.f1_negative));
            extra.push(("screened_share".into(), q.screened_share));
            extra.push(("flipped_share".into(), flipped.iter().filter(|&&f| f).count() as f64 / flipped.len() as f64));
            q.auroc
        }
        "S8" => {
            let base = honest_reward(s, w, &honest).await?;
            extra.push(("honest_reward".into(), base));
            let mut c = honest.clone();
            let classes = match w.task {
                TaskKind::Tabular { classes, .. } => classes,
                _ => 2,
            };
            let crafted: Vec<Value> = (0..s.outliers)
                .map(|_| {
                    let xs: Vec<f64> =
                        w.feature_scale.iter().map(|&m| round_sig(m.max(1.0) * w.rng.gen_range(5.0..20.0))).collect();
                    tabular_value(&xs, w.rng.gen_range(0..classes))
                })
                .collect();
            c.push(("c0".into(), crafted));
            let with = w.run(&c).await?;
            extra.push(("screened".into(), with.measured.plan.screened.len() as f64));
            // The measurement's own noise: the honest epoch again under another epoch seed (other
            // coalitions, another training seed). An inflation within this is not the outliers'.
            let seed = w.epoch_seed;
            w.epoch_seed = *blake3::hash(&seed).as_bytes();
            let rerun = w.run(&honest).await?.reward("c0");
            w.epoch_seed = seed;
            extra.push(("honest_rerun_change".into(), ratio(rerun, base) - 1.0));
            ratio(with.reward("c0"), base) - 1.0
        }
        "S9" => {
            let per = w.slices[0].len();
            let ov = ((per as f64) * s.overlap).round() as usize;
            let a = w.slices[0].clone();
            let mut b: Vec<Value> = a[per - ov..].to_vec();
            b.extend(w.slices[1][..per - ov].iter().cloned());
            let others: Vec<(String, Vec<Value>)> = honest.iter().skip(2).cloned().collect();
            let mut ab = vec![("A".to_string(), a.clone()), ("B".to_string(), b.clone())];
            ab.extend(others.clone());
            let mut ba = vec![("B".to_string(), b.clone()), ("A".to_string(), a.clone())];
            ba.extend(others.clone());
            let mut union = a.clone();
            union.extend(w.slices[1][..per - ov].iter().cloned());
            let mut single = vec![("C".to_string(), union)];
            single.extend(others);
            let o1 = w.run(&ab).await?;
            let o2 = w.run(&ba).await?;
            let o3 = w.run(&single).await?;
            if o3.reward("C") == 0.0 {
                bail!(
                    "{}: the single holder of the union earned nothing, so shares cannot be compared; raise `jobs` or lower `base_records`",
                    s.scenario
                );
            }
            let total = o1.reward("A") + o1.reward("B");
            let dev = (total - o3.reward("C")).abs() / o3.reward("C").max(1.0);
            let shift_a = o1.reward("A") - o2.reward("A");
            let shift_b = o2.reward("B") - o1.reward("B");
            let asym = (shift_a - shift_b).abs() / total.max(1.0);
            extra.push(("total_vs_one_copy".into(), dev));
            extra.push(("mirror_asymmetry".into(), asym));
            dev.max(asym)
        }
        "S12" => {
            // The demo's kind of inputs, unchanged, under `epoch_seeds` epoch seeds: the curator,
            // the volume contributor, and copiers re-submitting the volume's records later.
            let (curated, volume) = (w.extra[0].clone(), w.extra[1].clone());
            let mut c = vec![("curator".to_string(), curated), ("volume".to_string(), volume.clone())];
            let parts = s.copiers.max(1) as usize;
            for p in 0..s.copiers as usize {
                let part: Vec<Value> = volume.iter().skip(p).step_by(parts).cloned().collect();
                c.push((format!("copier{p}"), part));
            }
            let at: Vec<u64> = (0..c.len() as u64).map(|i| i.min(2)).collect();
            let admitted = w.admit(&c, &at).await?;
            let base_seed = w.epoch_seed;
            let mut runs: Vec<BTreeMap<String, u64>> = Vec::new();
            let (mut top, mut retained, mut capped, mut units, mut jobs) = (0f64, 0f64, 0f64, 0f64, 0f64);
            for e in 0..s.epoch_seeds {
                w.epoch_seed = *blake3::hash(&[&base_seed[..], &e.to_le_bytes()].concat()).as_bytes();
                let out = w.measure(&admitted)?;
                let cur = out.reward("curator");
                if out.rewards.iter().all(|(k, &v)| k == "curator" || (v as f64) < cur) {
                    top += 1.0;
                }
                retained += out.measured.scores.retained as f64;
                capped += out.measured.scores.retained_by_cap as f64;
                units += out.measured.plan.units.len() as f64;
                jobs += out.measured.plan.job_count() as f64;
                runs.push(out.rewards);
            }
            w.epoch_seed = base_seed;
            let n = s.epoch_seeds as f64;
            let pool = w.params.pool as f64;
            let mut cv_max: f64 = 0.0;
            for name in c.iter().map(|x| x.0.clone()) {
                let r: Vec<f64> = runs.iter().map(|m| m.get(&name).copied().unwrap_or(0) as f64).collect();
                let mean = r.iter().sum::<f64>() / n;
                let sd = (r.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
                extra.push((format!("{name}_mean"), mean));
                extra.push((format!("{name}_min"), r.iter().copied().fold(f64::INFINITY, f64::min)));
                extra.push((format!("{name}_max"), r.iter().copied().fold(0.0, f64::max)));
                if mean >= 0.05 * pool {
                    let cv = sd / mean;
                    extra.push((format!("{name}_cv"), cv));
                    cv_max = cv_max.max(cv);
                }
            }
            extra.push(("curator_top_fraction".into(), top / n));
            extra.push(("retained_mean".into(), retained / n));
            extra.push(("retained_by_cap_mean".into(), capped / n));
            extra.push(("units".into(), units / n));
            extra.push(("jobs".into(), jobs / n));
            cv_max
        }
        _ => {
            let out = w.run(&honest).await?;
            let m = &out.measured;
            let runs = m.plan.job_count() as f64 * s.replication as f64 / s.committee as f64;
            extra.push(("jobs".into(), m.plan.job_count() as f64));
            extra.push(("units".into(), m.plan.units.len() as f64));
            extra.push(("seconds_per_job".into(), m.train_secs / m.trained.max(1) as f64));
            extra.push((
                "records_per_job".into(),
                (0..m.plan.job_count()).map(|j| m.plan.job_records(j).map_or(0, |r| r.len())).sum::<usize>() as f64
                    / m.plan.job_count() as f64,
            ));
            runs
        }
    };
    Ok(SeedResult { metric, extra })
}
