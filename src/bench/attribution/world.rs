//! One seed's world: splits the data set, writes the manifest and builds the frozen base and the
//! utility job, then admits contributions into a fresh datadir and measures the epoch over them.

use super::base::text_base;
use super::data::Dataset;
use super::records::flip;
use super::scenario::Scenario;
use super::{manifest_base_dir, tabular_value};
use crate::admission::{self, canonical};
use crate::attribution::EpochParams;
use crate::codec::Signed;
use crate::identity::Identity;
use crate::manifest::{Manifest, ManifestFile, TaskKind};
use crate::measure::{self, UtilityCache};
use crate::store::Store;
use crate::trainer::utility::{UtilityJob, UtilityOptions};
use crate::trainer::{init, train::TrainConfig};
use anyhow::{Context, bail};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// One seed's world: data split, base, evaluation set, and the utility job shared by its variants.
pub(super) struct World {
    pub(super) task: TaskKind,
    pub(super) manifest_toml: String,
    pub(super) eval_jsonl: String,
    pub(super) eval: Vec<Value>,
    /// Contributor slices of the pool, in record form.
    pub(super) slices: Vec<Vec<Value>>,
    /// S2: curated and redundant records.
    pub(super) extra: Vec<Vec<Value>>,
    pub(super) job: UtilityJob,
    pub(super) cache: UtilityCache,
    pub(super) params: EpochParams,
    pub(super) epoch_seed: [u8; 32],
    pub(super) recipe_seed: u64,
    pub(super) rng: ChaCha8Rng,
    pub(super) feature_scale: Vec<f64>,
}

impl World {
    pub(super) fn build(s: &Scenario, data: &Dataset, seed: u64, jobs: u32) -> anyhow::Result<World> {
        let Dataset::Tabular { features, classes, rows } = data else {
            return Self::build_text(s, data, seed, jobs);
        };
        let (features, classes) = (*features, *classes);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut idx: Vec<usize> = (0..rows.len()).collect();
        idx.shuffle(&mut rng);
        let critical = |l: u32| s.critical_classes.contains(&l);
        let value = |i: usize| tabular_value(&rows[i].0, rows[i].1);
        let eval_idx: Vec<usize> = idx[..s.eval_records as usize].to_vec();
        let rest: Vec<usize> = idx[s.eval_records as usize..].to_vec();
        let (base_idx, pool): (Vec<usize>, Vec<usize>) = if s.curated_vs_volume() {
            let common: Vec<usize> = rest.iter().copied().filter(|&i| !critical(rows[i].1)).collect();
            (common.iter().copied().take(s.base_records as usize).collect(), rest.clone())
        } else {
            (rest[..s.base_records as usize].to_vec(), rest[s.base_records as usize..].to_vec())
        };
        let mut slices = Vec::new();
        let mut extra = Vec::new();
        if s.curated_vs_volume() {
            let curated: Vec<Value> =
                pool.iter().copied().filter(|&i| critical(rows[i].1)).take(s.curated as usize).map(value).collect();
            let common: Vec<usize> =
                pool.iter().copied().filter(|&i| !critical(rows[i].1) && !base_idx.contains(&i)).collect();
            let mut redundant = Vec::with_capacity(s.redundant as usize);
            for j in 0..s.redundant as usize {
                let (xs, l) = &rows[common[j % common.len()]];
                // Resampled common-slice rows with four features nudged by one step of their own
                // scale: new records (not near-duplicates), no new knowledge.
                let mut noisy = xs.clone();
                let live: Vec<usize> = (0..noisy.len()).filter(|&f| noisy[f] != 0.0).collect();
                for _ in 0..4 {
                    // Only features that are already non-zero: no value outside the data's support.
                    let Some(&f) = live.get(rng.gen_range(0..live.len().max(1))) else { break };
                    let step = if noisy[f] == noisy[f].round() { 1.0 } else { noisy[f].abs() * 0.05 };
                    noisy[f] = (noisy[f] + if rng.gen_bool(0.5) { step } else { -step }).max(0.0);
                }
                redundant.push(tabular_value(&noisy, *l));
            }
            extra.push(curated);
            extra.push(redundant);
        } else {
            let per = s.records_per_contributor as usize;
            let mut pool = pool.clone();
            if s.scenario == "S1" || s.regions {
                // Contributors hold different regions of the data (sorted by the first feature), so
                // content units differ in what they hold and flipped labels concentrate in some.
                pool.truncate(per * s.contributors as usize);
                pool.sort_by(|&a, &b| rows[a].0[0].total_cmp(&rows[b].0[0]));
            }
            for c in 0..s.contributors as usize {
                let mut slice: Vec<Value> = pool[c * per..(c + 1) * per].iter().copied().map(value).collect();
                if s.flip_rate > 0.0 && s.scenario == "S1" {
                    // Honest but mixed: contributor c flips c/(n-1) × flip_rate of its labels.
                    let rate = s.flip_rate * c as f64 / (s.contributors as f64 - 1.0).max(1.0);
                    flip(&mut slice, rate, classes, &mut rng);
                }
                slices.push(slice);
            }
        }
        let slice_of = |l: u32| if s.curated_vs_volume() && critical(l) { "critical" } else { "common" };
        let eval: Vec<Value> = eval_idx
            .iter()
            .map(|&i| {
                let mut v = value(i);
                v["slice"] = json!(slice_of(rows[i].1));
                v
            })
            .collect();
        let eval_jsonl: String = eval.iter().map(|v| format!("{v}\n")).collect();
        let slices_toml = if s.curated_vs_volume() {
            format!(
                "[{{ name = \"common\", weight = {} }}, {{ name = \"critical\", weight = {} }}]",
                1.0 - s.critical_weight,
                s.critical_weight
            )
        } else {
            "[{ name = \"common\", weight = 1.0 }]".to_string()
        };
        let manifest_toml = format!(
            "name = \"bench-{name}\"\nlicense = \"CC-BY-4.0\"\nreward_pool = 1000000\n\
             [task]\nkind = \"tabular\"\nfeatures = {features}\nclasses = {classes}\n\
             [admission]\ncontribution_records_max = 10000000\nnear_duplicate_digits = {digits}\n\
             [base_model]\nfamily = \"mlp\"\npreset = \"tiny\"\nseed = {seed}\n\
             [recipe]\nlora_rank = {rank}\nlora_alpha = {alpha}\ntarget_modules = [\"all\"]\nsteps = {steps}\n\
             learning_rate = {lr}\nbatch = {batch}\nsequence_length = 16\nrecords_per_unit_max = {rpu}\nseed = {seed}\n\
             [eval]\npublic = \"eval.jsonl\"\nslices = {slices_toml}\n[committee]\nmembers = [\"self\"]\n",
            name = s.scenario,
            digits = s.near_duplicate_digits,
            rank = s.lora_rank.min(classes),
            alpha = 2 * s.lora_rank.min(classes),
            steps = s.steps,
            lr = s.learning_rate,
            batch = s.batch,
            rpu = s.records_per_unit_max,
        );
        let task = TaskKind::Tabular { features, classes };
        let (manifest, _) = manifest_from(&manifest_toml, &eval_jsonl)?;
        // The frozen base: the manifest's, provisioned as every peer does, then pretrained on the
        // base split (the common slice only, for S2).
        let base = crate::trainer::Base::load(&manifest_base_dir(&manifest, &eval)?, tch::Device::Cpu)?;
        let base_records: Vec<Value> = base_idx.iter().copied().map(value).collect();
        let cfg = TrainConfig { steps: s.base_steps, seed, ..TrainConfig::from_recipe(&manifest.recipe)? };
        if !base_records.is_empty() {
            init::pretrain(&base, &task, &base_records, &cfg, 1, &mut |_| {})?;
        }
        let job =
            UtilityJob::new(base, &task, &manifest.recipe, &manifest.eval.slices, &eval, UtilityOptions::default())?;
        let params = s.epoch_params(&manifest, jobs);
        let epoch_seed = *blake3::hash(format!("datanet-bench/{}/{seed}", s.scenario).as_bytes()).as_bytes();
        let mut feature_scale = vec![0f64; features as usize];
        for (xs, _) in rows {
            for (m, &x) in feature_scale.iter_mut().zip(xs) {
                *m = m.max(x.abs());
            }
        }
        Ok(World {
            task,
            manifest_toml,
            eval_jsonl,
            eval,
            slices,
            extra,
            job,
            cache: UtilityCache::new(),
            params,
            epoch_seed,
            recipe_seed: manifest.recipe.seed,
            rng,
            feature_scale,
        })
    }

    /// Text S2: the evaluation suite (half critical, half common rows), a small decoder pretrained
    /// on common rows only (so it gets the critical slice wrong), `curated` critical rows and
    /// `redundant` distinct common rows; LoRA coalition jobs through the same utility.
    fn build_text(s: &Scenario, data: &Dataset, seed: u64, jobs: u32) -> anyhow::Result<World> {
        let Dataset::Text { rows, .. } = data else { bail!("text world over tabular data") };
        let task = data.task();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut critical: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].critical).collect();
        let mut common: Vec<usize> = (0..rows.len()).filter(|&i| !rows[i].critical).collect();
        critical.shuffle(&mut rng);
        common.shuffle(&mut rng);
        let (ec, eo) = s.text_eval_split();
        let (curated, base_n, redundant) = (s.curated as usize, s.base_records as usize, s.redundant as usize);
        if critical.len() < ec + curated || common.len() < eo + base_n + redundant {
            bail!("{}: the data has too few rows for the scenario's sizes", s.scenario);
        }
        let rec = |i: &usize| rows[*i].record.clone();
        let mut eval: Vec<Value> = Vec::with_capacity(ec + eo);
        for (idx, slice) in [(&critical[..ec], "critical"), (&common[..eo], "common")] {
            for i in idx {
                let mut v = rec(i);
                v["slice"] = json!(slice);
                eval.push(v);
            }
        }
        let eval_jsonl: String = eval.iter().map(|v| format!("{v}\n")).collect();
        let curated: Vec<Value> = critical[ec..ec + curated].iter().map(rec).collect();
        let base_records: Vec<Value> = common[eo..eo + base_n].iter().map(rec).collect();
        let redundant: Vec<Value> = common[eo + base_n..eo + base_n + redundant].iter().map(rec).collect();
        let modules = if s.target_modules.is_empty() {
            vec!["q_proj".to_string(), "k_proj".into(), "v_proj".into(), "o_proj".into()]
        } else {
            s.target_modules.clone()
        };
        let manifest_toml = format!(
            "name = \"bench-{name}-text\"\nlicense = \"CC-BY-4.0\"\nreward_pool = 1000000\n\
             [task]\nkind = \"{kind}\"\n\
             [admission]\ncontribution_records_max = 10000000\n\
             [base_model]\nfamily = \"llama\"\npreset = \"tiny\"\nseed = {seed}\n\
             [recipe]\nlora_rank = {rank}\nlora_alpha = {alpha}\ntarget_modules = {modules:?}\nsteps = {steps}\n\
             learning_rate = {lr}\nbatch = {batch}\nsequence_length = {seq}\nrecords_per_unit_max = {rpu}\nseed = {seed}\n\
             [eval]\npublic = \"eval.jsonl\"\nslices = [{{ name = \"common\", weight = {wc} }}, {{ name = \"critical\", weight = {wk} }}]\n\
             [committee]\nmembers = [\"self\"]\n",
            name = s.scenario,
            kind = task.name(),
            rank = s.lora_rank,
            alpha = 2 * s.lora_rank,
            steps = s.steps,
            lr = s.learning_rate,
            batch = s.batch,
            seq = s.sequence_length,
            rpu = s.records_per_unit_max,
            wc = 1.0 - s.critical_weight,
            wk = s.critical_weight,
        );
        let (manifest, _) = manifest_from(&manifest_toml, &eval_jsonl)?;
        let base = text_base(s, &task, &manifest.recipe, &base_records, seed)?;
        let job =
            UtilityJob::new(base, &task, &manifest.recipe, &manifest.eval.slices, &eval, UtilityOptions::default())?;
        let params = s.epoch_params(&manifest, jobs);
        let epoch_seed = *blake3::hash(format!("datanet-bench/{}-text/{seed}", s.scenario).as_bytes()).as_bytes();
        Ok(World {
            task,
            manifest_toml,
            eval_jsonl,
            eval,
            slices: Vec::new(),
            extra: vec![curated, redundant],
            job,
            cache: UtilityCache::new(),
            params,
            epoch_seed,
            recipe_seed: manifest.recipe.seed,
            rng,
            feature_scale: Vec::new(),
        })
    }

    /// Admits `contributions` (identity name, records) in order into a fresh datadir and measures
    /// the epoch, the i-th contribution at priority i (the scenario's order); returns reward per
    /// identity name and the measurement.
    pub(super) async fn run(&mut self, contributions: &[(String, Vec<Value>)]) -> anyhow::Result<Outcome> {
        let at: Vec<u64> = (0..contributions.len() as u64).collect();
        self.run_at(contributions, &at).await
    }

    /// [`World::run`] with the witnessed priority of each contribution given (`priorities[i]`
    /// for `contributions[i]`), passed to `Store::datanet_records` as the freeze would.
    pub(super) async fn run_at(
        &mut self,
        contributions: &[(String, Vec<Value>)],
        priorities: &[u64],
    ) -> anyhow::Result<Outcome> {
        let admitted = self.admit(contributions, priorities).await?;
        self.measure(&admitted)
    }

    /// Admits `contributions` into a fresh datadir (the i-th at witnessed priority `priorities[i]`)
    /// and reads the records attribution sees back.
    pub(super) async fn admit(
        &self,
        contributions: &[(String, Vec<Value>)],
        priorities: &[u64],
    ) -> anyhow::Result<Admitted> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path();
        std::fs::write(dir.join("eval.jsonl"), &self.eval_jsonl)?;
        std::fs::write(dir.join("m.toml"), &self.manifest_toml)?;
        let founder = Identity::from_seed(*blake3::hash(b"datanet-bench/founder").as_bytes());
        let store = Store::open(&dir.join("peer")).await?;
        let (manifest, blobs) =
            ManifestFile::read(&dir.join("m.toml"))?.into_manifest(dir, founder.public_key(), &|_| Ok(()))?;
        store.put_blob(blobs.public).await?;
        let id = store.put_manifest(&Signed::sign(manifest.clone(), &founder.signing_key())).await?;
        let mut names = BTreeMap::new();
        let mut witnessed = BTreeMap::new();
        for ((name, records), &priority) in contributions.iter().zip(priorities) {
            let who = Identity::from_seed(*blake3::hash(format!("datanet-bench/{name}").as_bytes()).as_bytes());
            names.insert(who.public_key(), name.clone());
            let canon = records
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    canonical::canonicalize(&manifest.task, v.clone(), manifest.admission.record_bytes_max)
                        .with_context(|| format!("contributor {name} record {}", i + 1))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            // Records copying an evaluation record are skipped, as `contribute --skip-invalid` does
            // (the text corpus repeats the evaluation set's phrasings).
            let ack = admission::admit_local_skipping_contaminated(&store, &who, &id, canon).await?.ack;
            // Resubmitting an identical contribution changes nothing: it keeps its first priority.
            witnessed.entry(ack.id).or_insert(priority);
        }
        let records = store.datanet_records(&id, Some(&witnessed)).await?;
        store.close().await?;
        Ok(Admitted { records, names })
    }

    /// Measures one epoch (under `self.epoch_seed`) over admitted records.
    pub(super) fn measure(&mut self, admitted: &Admitted) -> anyhow::Result<Outcome> {
        let Admitted { records, names } = admitted;
        let progress = indicatif::ProgressBar::hidden();
        let m = measure::measure_epoch(
            &self.task,
            self.recipe_seed,
            records,
            &self.eval,
            &self.params,
            self.epoch_seed,
            &mut self.job,
            &mut self.cache,
            &progress,
        )?;
        let mut rewards: BTreeMap<String, u64> = BTreeMap::new();
        for l in &m.scores.leaves {
            *rewards.entry(names.get(&l.contributor).cloned().unwrap_or_else(|| l.contributor.short())).or_default() +=
                l.reward;
        }
        let values = records.iter().map(|r| (r.hash, r.value.clone())).collect::<BTreeMap<_, _>>();
        Ok(Outcome { rewards, measured: m, admitted: values.len(), values })
    }
}

/// Records admitted once, and the names of their identities.
pub(super) struct Admitted {
    pub(super) records: Vec<crate::store::contributions::AdmittedRecord>,
    pub(super) names: BTreeMap<crate::ids::PeerKey, String>,
}

pub(super) fn manifest_from(
    toml_text: &str,
    eval_jsonl: &str,
) -> anyhow::Result<(Manifest, crate::manifest::EvalBlobs)> {
    let tmp = tempfile::tempdir()?;
    std::fs::write(tmp.path().join("eval.jsonl"), eval_jsonl)?;
    std::fs::write(tmp.path().join("m.toml"), toml_text)?;
    let founder = Identity::from_seed(*blake3::hash(b"datanet-bench/founder").as_bytes());
    Ok(ManifestFile::read(&tmp.path().join("m.toml"))?.into_manifest(tmp.path(), founder.public_key(), &|_| Ok(()))?)
}

pub(super) struct Outcome {
    pub(super) rewards: BTreeMap<String, u64>,
    pub(super) measured: measure::Measured,
    pub(super) admitted: usize,
    pub(super) values: BTreeMap<crate::ids::RecordHash, Value>,
}

impl Outcome {
    pub(super) fn reward(&self, name: &str) -> f64 {
        self.rewards.get(name).copied().unwrap_or(0) as f64
    }
    pub(super) fn prefix_reward(&self, prefix: &str) -> f64 {
        self.rewards.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, v)| *v as f64).sum()
    }
}
