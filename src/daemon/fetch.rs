//! The fetch queue: which announced contributions are queued, evicted and started, the fetch
//! tasks that download and re-admit them, retries with backoff and penalties for peers that
//! announced what they did not serve.

use super::metrics::DaemonMetrics;
use super::{DaemonActor, Internal};
use crate::admission::{self, SignedContribution};
use crate::ids::{ContributionId, PeerKey};
use crate::net::NetHandle;
use crate::net::blobs::FetchKind;
use crate::store::Store;
use libp2p::PeerId;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long a queued fetch waits for a provider's address before trying anyway.
const ADDRESS_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub(super) enum FetchFailure {
    Fetch(String),
    Admit(String),
}

pub(super) struct Pending {
    pub(super) signed: SignedContribution,
    pub(super) providers: Vec<PeerKey>,
    pub(super) announcer: Option<PeerId>,
    pub(super) attempts: u32,
    pub(super) queued_at: Instant,
    pub(super) next_try: Instant,
}

/// When the fetch queue is full, the queued (not running) entry to drop for a newcomer from
/// `announcer`: one of the announcer with the most entries queued, if the newcomer's announcer
/// has fewer — so a peer flooding validly signed announcements it never serves crowds out only
/// its own, never the other peers' (fair share per announcing peer). `None`: drop the newcomer.
fn evict_for(
    pending: &HashMap<ContributionId, Pending>,
    in_flight: &HashSet<ContributionId>,
    announcer: Option<PeerId>,
) -> Option<ContributionId> {
    let mut counts: HashMap<Option<PeerId>, usize> = HashMap::new();
    for p in pending.values() {
        *counts.entry(p.announcer).or_default() += 1;
    }
    let mine = counts.get(&announcer).copied().unwrap_or(0);
    let (top, most) = counts.into_iter().max_by_key(|(a, n)| (*n, a.map(|p| p.to_bytes())))?;
    if mine + 1 >= most {
        return None;
    }
    // The top announcer's entry tried most, then queued last.
    pending
        .iter()
        .filter(|(id, p)| p.announcer == top && !in_flight.contains(*id))
        .max_by_key(|(id, p)| (p.attempts, p.queued_at, **id))
        .map(|(id, _)| *id)
}

impl DaemonActor {
    /// Queues a valid contribution for fetching unless it is stored, queued or running.
    pub(super) fn enqueue(&mut self, c: SignedContribution, providers: Vec<PeerKey>, announcer: Option<PeerId>) {
        let id = c.body.id();
        let me = self.identity.public_key();
        for k in &providers {
            if *k != me {
                self.holders.entry(id).or_default().insert(*k);
            }
        }
        if self.in_flight.contains(&id) || matches!(self.store.contribution_meta(&id), Ok(Some(_))) {
            return;
        }
        if let Some(p) = self.pending.get_mut(&id) {
            for k in providers {
                if k != me && !p.providers.contains(&k) {
                    p.providers.push(k);
                }
            }
            return;
        }
        if self.pending.len() >= self.cfg.net.fetch_queue_max as usize {
            DaemonMetrics::inc(&self.metrics.fetch_queue_full);
            match evict_for(&self.pending, &self.in_flight, announcer) {
                Some(victim) => {
                    self.pending.remove(&victim);
                }
                None => return,
            }
        }
        let mut all: Vec<PeerKey> = providers.into_iter().filter(|k| *k != me).collect();
        if let Some(h) = self.holders.get(&id) {
            let more: Vec<PeerKey> = h.iter().filter(|k| **k != me && !all.contains(k)).copied().collect();
            all.extend(more);
        }
        let now = Instant::now();
        self.pending
            .insert(id, Pending { signed: c, providers: all, announcer, attempts: 0, queued_at: now, next_try: now });
        self.metrics.fetch_queued.store(self.pending.len() as u64, Ordering::Relaxed);
    }

    pub(super) fn start_fetches(&mut self) {
        let max = self.cfg.net.fetch_in_flight_max as usize;
        if self.in_flight.len() >= max || self.pending.is_empty() {
            return;
        }
        let now = Instant::now();
        let blobs = self.net.blobs();
        let mut ready: Vec<(Instant, ContributionId)> = self
            .pending
            .iter()
            .filter(|(id, p)| {
                !self.in_flight.contains(*id)
                    && p.next_try <= now
                    && (p.providers.iter().any(|k| blobs.knows(k)) || now.duration_since(p.queued_at) >= ADDRESS_WAIT)
            })
            .map(|(id, p)| (p.queued_at, *id))
            .collect();
        ready.sort();
        for (_, id) in ready.into_iter().take(max - self.in_flight.len()) {
            let Some(p) = self.pending.get_mut(&id) else { continue };
            p.attempts += 1;
            self.in_flight.insert(id);
            let (signed, providers) = (p.signed.clone(), p.providers.clone());
            let (store, net, internal) = (self.store.clone(), self.net.clone(), self.internal.clone());
            let timeout = Duration::from_millis(self.cfg.net.fetch_timeout_ms);
            let source = providers.first().map(|k| k.short()).unwrap_or_default();
            self.tasks.spawn(async move {
                let result = fetch_and_admit(&store, &net, &signed, &providers, timeout, &source).await;
                let _ = internal.send(Internal::FetchDone { id, result }).await;
            });
        }
        self.metrics.fetch_in_flight.store(self.in_flight.len() as u64, Ordering::Relaxed);
    }

    /// A fetch task ended: the contribution is stored and announced as held, or refused, or retried.
    pub(super) async fn on_fetch_done(&mut self, id: ContributionId, result: Result<(), FetchFailure>) {
        self.in_flight.remove(&id);
        self.metrics.fetch_in_flight.store(self.in_flight.len() as u64, Ordering::Relaxed);
        match result {
            Ok(()) => {
                let p = self.pending.remove(&id);
                DaemonMetrics::inc(&self.metrics.contributions_replicated);
                if let Some(p) = p {
                    self.publish_holding(p.signed.body.datanet, id).await;
                }
            }
            Err(FetchFailure::Admit(e)) => {
                DaemonMetrics::inc(&self.metrics.replication_rejected);
                tracing::warn!(target: "datanet::daemon", contribution = %id.short(), error = %e, "replicated contribution refused");
                if let Some(p) = self.pending.remove(&id) {
                    self.penalize(p.announcer).await;
                }
            }
            Err(FetchFailure::Fetch(e)) => {
                DaemonMetrics::inc(&self.metrics.fetch_failures);
                let max = self.cfg.net.fetch_attempts_max;
                let give_up = self.pending.get(&id).is_none_or(|p| p.attempts >= max);
                if give_up {
                    DaemonMetrics::inc(&self.metrics.fetch_given_up);
                    tracing::warn!(target: "datanet::daemon", contribution = %id.short(), error = %e, "fetch given up");
                    if let Some(p) = self.pending.remove(&id) {
                        self.penalize(p.announcer).await;
                    }
                } else if let Some(p) = self.pending.get_mut(&id) {
                    let backoff = Duration::from_millis(500u64 << p.attempts.min(6));
                    tracing::info!(target: "datanet::daemon", contribution = %id.short(), error = %e, attempt = p.attempts, "fetch failed; will retry");
                    p.next_try = Instant::now() + backoff;
                }
            }
        }
        self.metrics.fetch_queued.store(self.pending.len() as u64, Ordering::Relaxed);
    }

    pub(super) async fn penalize(&self, peer: Option<PeerId>) {
        if let Some(p) = peer {
            if p != self.net.peer_id() {
                DaemonMetrics::inc(&self.metrics.peers_penalized);
                self.net.penalize(p).await;
            }
        }
    }
}

/// The most bytes a contribution's download may take: its signed chunk bytes plus its HashSeq
/// (32 bytes per chunk), doubled for a provider that fails mid-blob and a retry from another,
/// plus 1 MiB. The claims were checked against the manifest's limits before it was queued, so
/// no provider can make this peer store more than about twice `contribution_bytes_max`.
fn fetch_bytes_max(c: &crate::admission::ContributionRecord) -> u64 {
    c.byte_count.saturating_add(32 * c.chunk_count as u64).saturating_mul(2).saturating_add(1 << 20)
}

async fn fetch_and_admit(
    store: &Store,
    net: &NetHandle,
    signed: &SignedContribution,
    providers: &[PeerKey],
    timeout: Duration,
    source: &str,
) -> Result<(), FetchFailure> {
    let t = Instant::now();
    let bytes = net
        .blobs()
        .fetch(signed.body.root, FetchKind::HashSeq, providers, timeout, fetch_bytes_max(&signed.body))
        .await
        .map_err(|e| FetchFailure::Fetch(e.to_string()))?;
    let fetched = t.elapsed();
    admission::admit_replicated(store, signed, source).await.map_err(|e| FetchFailure::Admit(e.to_string()))?;
    tracing::debug!(
        target: "datanet::daemon",
        contribution = %signed.body.id().short(),
        bytes,
        fetch_ms = fetched.as_millis() as u64,
        admit_ms = (t.elapsed() - fetched).as_millis() as u64,
        "replicated"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::ContributionRecord;
    use crate::codec::Signed;
    use crate::identity::Identity;
    use crate::ids::DatanetId;

    fn pending(n: u8, announcer: Option<PeerId>) -> (ContributionId, Pending) {
        let who = Identity::from_seed([n; 32]);
        let body = ContributionRecord {
            datanet: DatanetId([1; 32]),
            contributor: who.public_key(),
            created_ms: n as u64,
            root: crate::ids::BlobHash([n; 32]),
            records_root: crate::merkle::root(&[[n; 32]]),
            record_count: 1,
            byte_count: 10,
            chunk_count: 1,
        };
        let signed = Signed::sign(body, &who.signing_key());
        let now = Instant::now();
        let p = Pending { signed, providers: vec![], announcer, attempts: 0, queued_at: now, next_try: now };
        (p.signed.body.id(), p)
    }

    // A full queue makes room for a newcomer only at the expense of the announcer holding the most entries, and never of a running fetch.
    #[test]
    fn full_fetch_queue_evicts_the_flooder_not_the_newcomer() {
        let (flooder, honest, other) = (PeerId::random(), PeerId::random(), PeerId::random());
        let mut q: HashMap<ContributionId, Pending> = (0..6).map(|i| pending(i, Some(flooder))).collect();
        q.extend((6..8).map(|i| pending(i, Some(honest))));
        let running: HashSet<ContributionId> =
            q.iter().filter(|(_, p)| p.signed.body.created_ms == 0).map(|(id, _)| *id).collect();
        let victim = evict_for(&q, &running, Some(other)).expect("room for a new announcer");
        assert_eq!(q[&victim].announcer, Some(flooder));
        assert!(!running.contains(&victim));
        // The flooder itself gets no room: its newcomer is dropped.
        assert_eq!(evict_for(&q, &running, Some(flooder)), None);
        // Equal shares: nobody is evicted.
        let even: HashMap<_, _> = (0..4).map(|i| pending(i, Some(if i % 2 == 0 { flooder } else { honest }))).collect();
        assert_eq!(evict_for(&even, &HashSet::new(), Some(honest)), None);
        assert_eq!(evict_for(&HashMap::new(), &HashSet::new(), None), None);
    }
}
