//! Epoch plans: the frozen input set less contaminated records, the public evaluation file, the
//! base model, and the plan computed from them on a blocking thread.

use super::EpochInternal;
use super::sealed::sealed_split;
use crate::admission;
use crate::attribution::{self, EpochParams, EpochPlan};
use crate::config::EpochSettings;
use crate::daemon::{DaemonActor, Internal};
use crate::ids::{ContributionId, DatanetId, PeerKey, RecordHash};
use crate::manifest::Manifest;
use crate::measure::input_records;
use crate::net::NetHandle;
use crate::net::blobs::FetchKind;
use crate::store::Store;
use crate::store::contributions::AdmittedRecord;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The plan of an epoch and what training its jobs needs.
pub(in crate::daemon) struct Planned {
    pub(super) plan: EpochPlan,
    pub(super) values: HashMap<RecordHash, Value>,
    pub(super) eval: Vec<Value>,
    pub(super) base: PathBuf,
}

impl DaemonActor {
    pub(super) fn epoch_spawn_plan(
        &mut self,
        d: DatanetId,
        epoch: u64,
        seed: [u8; 32],
        items: Vec<(ContributionId, u64)>,
    ) {
        let Some(m) = self.joined.get(&d).cloned() else { return };
        let (store, net, internal) = (self.store.clone(), self.net.clone(), self.internal.clone());
        let (settings, datadir, me) = (self.cfg.epoch.clone(), self.datadir.clone(), self.identity.public_key());
        self.tasks.spawn(async move {
            let result =
                build_plan(&store, &net, me, &m, (d, epoch), seed, &items, &settings, &datadir).await.map(Box::new);
            let _ = internal.send(Internal::Epoch(EpochInternal::Planned { datanet: d, epoch, result })).await;
        });
    }
}

/// Reads the frozen input set, the evaluation file and (with a sealed pool) this epoch's sealed
/// split, and computes the plan (blocking part on a blocking thread).
#[allow(clippy::too_many_arguments)]
pub(super) async fn build_plan(
    store: &Store,
    net: &NetHandle,
    me: PeerKey,
    m: &Manifest,
    (d, epoch): (DatanetId, u64),
    seed: [u8; 32],
    items: &[(ContributionId, u64)],
    settings: &EpochSettings,
    datadir: &Path,
) -> Result<Planned, String> {
    // The freeze's certified witnessed priorities order the records: never the contributor's own
    // signed `created_ms`.
    let priorities: BTreeMap<ContributionId, u64> = items.iter().copied().collect();
    let records = store.datanet_records(&d, Some(&priorities)).await.map_err(|e| format!("input records: {e}"))?;
    let public = eval_records(store, net, me, m, Duration::from_millis(settings.eval_fetch_timeout_ms)).await?;
    let split = sealed_split(store, m, epoch, &seed)?;
    let revealed = admission::sealed::revealed_in_ledger(store, m).map_err(|e| e.to_string())?;
    let (m, datadir) = (m.clone(), datadir.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let (reveal, opened) = split.unzip();
        let opened = opened.unwrap_or_default();
        let records = uncontaminated(&m, records, &public, &revealed, &opened, epoch);
        let public_values: Vec<Value> = public.iter().map(admission::sealed::with_slice).collect();
        let (inputs, eval_emb) = input_records(&m.task, &records, &public_values).map_err(|e| e.to_string())?;
        let params = EpochParams::from_manifest(&m);
        let mut plan = attribution::plan(&inputs, &eval_emb, seed, &params).map_err(|e| e.to_string())?;
        plan.sealed = reveal;
        let base = base_dir(&datadir, &m, &public_values)?;
        let values = records.into_iter().map(|r| (r.hash, r.value)).collect();
        let eval = admission::sealed::measured_eval(&public, &opened);
        Ok(Planned { plan, values, eval, base })
    })
    .await
    .map_err(|e| format!("plan task: {e}"))?
}

/// The input records less those that copy or nearly copy an evaluation record known at this
/// epoch (public, revealed before, or in this epoch's split): a record admitted before its
/// evaluation twin became known earns nothing from then on. Every member drops the same ones.
pub(crate) fn uncontaminated(
    m: &Manifest,
    records: Vec<AdmittedRecord>,
    public: &[admission::EvalRecord],
    revealed: &[admission::EvalRecord],
    opened: &[admission::EvalRecord],
    epoch: u64,
) -> Vec<AdmittedRecord> {
    use admission::sealed::canonical_of;
    let mut ix = admission::ContaminationIndex::new(m, public);
    ix.extend(admission::contamination::SEALED_SOURCE, canonical_of(revealed).chain(canonical_of(opened)));
    let before = records.len();
    let kept: Vec<AdmittedRecord> =
        records.into_iter().filter(|r| ix.check_value(&r.hash, &r.value).is_none()).collect();
    if kept.len() < before {
        tracing::info!(target: "datanet::daemon::epoch", datanet = %m.id().short(), epoch, dropped = before - kept.len(), "records copying evaluation records earn nothing");
    }
    kept
}

/// The public evaluation records of a Datanet, each with its `slice` field; the file is fetched
/// from the committee and the founder when this peer does not hold it.
pub async fn eval_values(
    store: &Store,
    net: &NetHandle,
    me: PeerKey,
    m: &Manifest,
    timeout: Duration,
) -> Result<Vec<Value>, String> {
    Ok(eval_records(store, net, me, m, timeout).await?.iter().map(admission::sealed::with_slice).collect())
}

/// The largest public evaluation file a peer downloads.
pub const EVAL_FILE_BYTES_MAX: u64 = 64 << 20;

/// The public evaluation records of a Datanet (see [`eval_values`]).
pub async fn eval_records(
    store: &Store,
    net: &NetHandle,
    me: PeerKey,
    m: &Manifest,
    timeout: Duration,
) -> Result<Vec<admission::EvalRecord>, String> {
    let h = m.eval.public_hash;
    if !store.has_blob(&h).await.unwrap_or(false) {
        let mut providers: Vec<PeerKey> = m.committee.members.iter().copied().filter(|k| *k != me).collect();
        if m.founder != me && !providers.contains(&m.founder) {
            providers.insert(0, m.founder);
        }
        net.blobs()
            .fetch(h, FetchKind::Raw, &providers, timeout, EVAL_FILE_BYTES_MAX)
            .await
            .map_err(|e| format!("fetching the evaluation file {}: {e}", h.short()))?;
    }
    let bytes = store.get_blob(&h).await.map_err(|e| format!("the evaluation file {}: {e}", h.short()))?;
    admission::parse_eval(m, &bytes).map_err(|e| format!("the evaluation file: {e}"))
}

/// The base folder of a manifest, provisioned like every other path's ([`crate::trainer::provision_base`]):
/// `models/<hash>/` re-hashed before use, else its generated preset standardized on `eval` (created once).
pub fn base_dir(datadir: &Path, m: &Manifest, eval: &[Value]) -> Result<PathBuf, String> {
    crate::trainer::provision_base(datadir, m, eval, None).map_err(|e| format!("the base model: {e}"))
}
