//! `datanet bench attribution --data FILE --scenario FILE.toml`: attribution quality, end to end.
//!
//! A scenario file (`testnet/bench/*.toml`) names one of the DESIGN.md §10 scenarios and its sizes.
//! For each seed the runner splits the data set into a public evaluation set, base-pretraining
//! records and disjoint contributor slices; pretrains a frozen `mlp` base; then for every variant
//! of the scenario (honest, duplicated, split into sybils, …) creates a fresh datadir, admits each
//! contribution through the real admission path (`admission::admit_local`: canonicalization, exact
//! and near-duplicate detection, chunks, sled), reads the records back with
//! `Store::datanet_records`, and runs [`crate::measure::measure_epoch`] — the same plan, jobs and
//! scoring as `datanet attribute`. Variants that produce the same coalition reuse its measured
//! utility. It prints one row per seed, the mean and spread, a JSON line, and last a line
//! `RESULT scenario=… metric=… value=… target=… pass=…`.
//!
//! Data: CSV in the layout of `../shared/data` (label last; optional first line
//! `n_samples,n_features,class names…`; `.gz` accepted) or JSONL text (`{"text": …}`).
//!
//! Files: `data` (data sets), `scenario` (the scenario file), `records` (tabular records and their
//! manipulations), `base` (frozen bases and their cache), `world` (one seed's world: admit and
//! measure), `seed` (one seed's variants and metric), `metrics` (screen quality, Spearman),
//! `runner` (the command and the report over seeds), `flood` (S14's freeze), `sealed_eval` (S15).

mod base;
mod data;
mod metrics;
mod records;
mod runner;
mod scenario;
mod seed;
mod world;

pub mod flood;
pub mod sealed_eval;

#[cfg(test)]
mod tests;

pub(crate) use base::manifest_base_dir;
pub use data::{DataError, Dataset, TextRow, generated_corpus, load_data, write_jsonl};
pub use metrics::spearman;
pub(crate) use records::tabular_value;
pub use runner::{AttributionBenchArgs, BenchReport, run, run_scenario};
pub use scenario::{Scenario, ScenarioError};
use seed::SeedResult;
use world::{Admitted, Outcome, World, manifest_from};
