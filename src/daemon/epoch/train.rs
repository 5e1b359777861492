//! Epoch training: the jobs assigned to this peer, measured one after another on a blocking
//! thread, each utility sent back to the actor.

use super::EpochInternal;
use super::plan::Planned;
use crate::attribution;
use crate::daemon::{DaemonActor, Internal};
use crate::ids::DatanetId;
use crate::manifest::Manifest;
use crate::trainer::utility::{UtilityJob, UtilityOptions};
use serde_json::Value;
use tokio::sync::mpsc;

impl DaemonActor {
    pub(super) fn epoch_start_training(&mut self, d: DatanetId) {
        let Some(m) = self.joined.get(&d).cloned() else { return };
        let Some(r) = self.epochs.running.get_mut(&d) else { return };
        if r.training || r.jobs.is_empty() {
            return;
        }
        let Some(planned) = r.planned.clone() else { return };
        let jobs = std::mem::take(&mut r.jobs);
        r.training = true;
        let epoch = r.machine.config().epoch;
        let threads = self.cfg.epoch.train_threads;
        let internal = self.internal.clone();
        self.tasks.spawn(async move {
            let tx = internal.clone();
            let error = match tokio::task::spawn_blocking(move || {
                train_jobs(&planned, &m, &jobs, threads, d, epoch, &tx)
            })
            .await
            {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(e) => Some(format!("training task: {e}")),
            };
            let _ = internal.send(Internal::Epoch(EpochInternal::TrainingDone { datanet: d, epoch, error })).await;
        });
    }
}

/// Measures `jobs` one after another and sends each utility to the actor (blocking thread).
fn train_jobs(
    planned: &Planned,
    m: &Manifest,
    jobs: &[u32],
    threads: usize,
    d: DatanetId,
    epoch: u64,
    tx: &mpsc::Sender<Internal>,
) -> Result<(), String> {
    let opts = UtilityOptions { threads, ..UtilityOptions::default() };
    let mut job = UtilityJob::open(&planned.base, &m.task, &m.recipe, &m.eval.slices, &planned.eval, opts)
        .map_err(|e| format!("loading the base from {}: {e}", planned.base.display()))?;
    let seed = attribution::jobs::training_seed(planned.plan.seed, m.recipe.seed);
    for &j in jobs {
        let result = match planned.plan.job_records(j) {
            None => Err(format!("job {j} is not in the plan")),
            Some(hashes) => {
                let values: Vec<Value> = hashes.iter().filter_map(|h| planned.values.get(h).cloned()).collect();
                job.utility_seeded(&values, seed).map_err(|e| e.to_string())
            }
        };
        if tx.blocking_send(Internal::Epoch(EpochInternal::Measured { datanet: d, epoch, job: j, result })).is_err() {
            break;
        }
    }
    Ok(())
}
