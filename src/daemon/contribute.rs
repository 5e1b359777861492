//! Local contributions: admitting a file as this peer's contribution, announcing it on gossip
//! and retrying announcements that found no peer yet.

use super::metrics::DaemonMetrics;
use super::wire::ContributionsMessage;
use super::{DaemonActor, Internal};
use crate::admission::{self, SignedContribution};
use crate::codec;
use crate::identity::Identity;
use crate::net::TopicKind;
use crate::store::Store;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// The outcome of `contribute` through the daemon.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContributeReport {
    pub id: String,
    pub records: u32,
    pub new_records: u32,
    pub duplicates: u32,
    pub near_duplicates: u32,
    pub skipped: usize,
    /// Records skipped with `--skip-invalid` as copies of evaluation records.
    #[serde(default)]
    pub contaminated: usize,
    pub already_present: bool,
    pub announced: bool,
}

/// Local contributions kept for a later announcement, at most.
const UNANNOUNCED_MAX: usize = 1024;

impl DaemonActor {
    /// Admits a local file on a task; the result comes back as [`Internal::Contributed`].
    pub(super) fn contribute(
        &mut self,
        datanet: String,
        path: PathBuf,
        skip_invalid: bool,
        reply: oneshot::Sender<Result<ContributeReport, String>>,
    ) {
        let (store, identity, internal) = (self.store.clone(), self.identity.clone(), self.internal.clone());
        self.tasks.spawn(async move {
            match contribute_local(&store, &identity, &datanet, &path, skip_invalid).await {
                Ok((signed, report)) => {
                    let _ = internal.send(Internal::Contributed { signed, reply, report }).await;
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        });
    }

    /// A local admission ended: announce it (kept for a retry when no peer hears it yet).
    pub(super) async fn on_contributed(
        &mut self,
        signed: SignedContribution,
        reply: oneshot::Sender<Result<ContributeReport, String>>,
        mut report: ContributeReport,
    ) {
        DaemonMetrics::inc(&self.metrics.contributions_local);
        let id = signed.body.id();
        report.announced = self.announce(signed).await.is_ok();
        if !report.announced && self.unannounced.len() < UNANNOUNCED_MAX {
            self.unannounced.push(id);
        }
        let _ = reply.send(Ok(report));
    }

    pub(super) async fn announce(&mut self, c: SignedContribution) -> Result<(), String> {
        let d = c.body.datanet;
        self.holders.entry(c.body.id()).or_default().insert(self.identity.public_key());
        let msg = codec::encode(&ContributionsMessage::Announce(c));
        self.net.publish(d, TopicKind::Contributions, msg).await.map_err(|e| e.to_string())
    }

    pub(super) async fn retry_announcements(&mut self) {
        if self.unannounced.is_empty() || self.last_retry.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last_retry = Instant::now();
        let mut still = Vec::new();
        for id in std::mem::take(&mut self.unannounced) {
            if let Ok(Some(c)) = self.store.contribution(&id) {
                if self.announce(c).await.is_err() {
                    still.push(id);
                }
            }
        }
        self.unannounced = still;
    }
}

async fn contribute_local(
    store: &Store,
    identity: &Identity,
    datanet: &str,
    path: &Path,
    skip_invalid: bool,
) -> Result<(SignedContribution, ContributeReport), String> {
    let (id, manifest) = store.require_datanet(datanet).map_err(|e| e.to_string())?;
    let parsed = admission::parse_input(&manifest, path, skip_invalid, None).map_err(|e| e.to_string())?;
    let local = admission::admit_input(store, identity, &id, parsed, skip_invalid).await.map_err(|e| e.to_string())?;
    let ack = local.ack;
    let report = ContributeReport {
        id: ack.id.to_hex(),
        records: ack.meta.records,
        new_records: ack.meta.new_records,
        duplicates: ack.meta.duplicates,
        near_duplicates: ack.meta.near_duplicates,
        skipped: local.skipped.len(),
        contaminated: local.contaminated.len(),
        already_present: ack.already_present,
        announced: false,
    };
    Ok((ack.contribution, report))
}
