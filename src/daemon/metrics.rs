//! The daemon's counters, rendered with the net room's as Prometheus text by `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a gossip message was refused (the `reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    Oversize,
    Malformed,
    BadSignature,
    UnknownDatanet,
    Limits,
    /// An epoch message from outside the committee for an epoch that has not started here.
    EpochNotStarted,
}

impl RejectReason {
    pub const ALL: [RejectReason; 6] = [
        RejectReason::Oversize,
        RejectReason::Malformed,
        RejectReason::BadSignature,
        RejectReason::UnknownDatanet,
        RejectReason::Limits,
        RejectReason::EpochNotStarted,
    ];
    pub fn label(self) -> &'static str {
        match self {
            RejectReason::Oversize => "oversize",
            RejectReason::Malformed => "malformed",
            RejectReason::BadSignature => "bad_signature",
            RejectReason::UnknownDatanet => "unknown_datanet",
            RejectReason::Limits => "limits",
            RejectReason::EpochNotStarted => "epoch_not_started",
        }
    }
}

/// Daemon counters.
#[derive(Debug, Default)]
pub struct DaemonMetrics {
    pub gossip_accepted: AtomicU64,
    pub announces_accepted: AtomicU64,
    pub gossip_ignored: AtomicU64,
    rejected: [AtomicU64; 6],
    pub contributions_local: AtomicU64,
    pub contributions_replicated: AtomicU64,
    pub replication_rejected: AtomicU64,
    pub fetch_failures: AtomicU64,
    pub fetch_given_up: AtomicU64,
    pub fetch_in_flight: AtomicU64,
    pub fetch_queued: AtomicU64,
    pub fetch_queue_full: AtomicU64,
    pub catchup_discovered: AtomicU64,
    pub catchup_rejected: AtomicU64,
    pub peers_penalized: AtomicU64,
    pub epoch_messages: AtomicU64,
    /// Joined Datanets whose sealed evaluation pool has fewer epochs left than its manifest's
    /// `protocol.sealed_low_epochs` (set at each status and each attested epoch).
    pub sealed_pools_low: AtomicU64,
}

impl DaemonMetrics {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn reject(&self, r: RejectReason) {
        Self::inc(&self.rejected[r as usize]);
    }

    pub fn rejected(&self, r: RejectReason) -> u64 {
        self.rejected[r as usize].load(Ordering::Relaxed)
    }

    pub fn rejected_total(&self) -> u64 {
        RejectReason::ALL.iter().map(|r| self.rejected(*r)).sum()
    }

    /// Renders the daemon's and the net room's counters in the Prometheus text format.
    pub fn render(&self, net: &crate::net::NetMetrics) -> String {
        use std::fmt::Write;
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut row = |name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        for (name, help, kind, v) in net.rows() {
            row(name, help, kind, v);
        }
        let rows = [
            ("datanet_gossip_accepted_total", "Gossip messages accepted.", "counter", g(&self.gossip_accepted)),
            (
                "datanet_announces_accepted_total",
                "Contribution announcements accepted.",
                "counter",
                g(&self.announces_accepted),
            ),
            ("datanet_gossip_ignored_total", "Gossip messages ignored.", "counter", g(&self.gossip_ignored)),
            (
                "datanet_contributions_admitted_total",
                "Contributions admitted from local input.",
                "counter",
                g(&self.contributions_local),
            ),
            (
                "datanet_contributions_replicated_total",
                "Contributions fetched, verified and admitted.",
                "counter",
                g(&self.contributions_replicated),
            ),
            (
                "datanet_replication_rejected_total",
                "Fetched contributions refused by admission.",
                "counter",
                g(&self.replication_rejected),
            ),
            (
                "datanet_fetch_failures_total",
                "Contribution fetch attempts that failed.",
                "counter",
                g(&self.fetch_failures),
            ),
            (
                "datanet_fetch_given_up_total",
                "Contributions given up after every attempt failed.",
                "counter",
                g(&self.fetch_given_up),
            ),
            ("datanet_fetch_in_flight", "Contribution fetches running.", "gauge", g(&self.fetch_in_flight)),
            ("datanet_fetch_queued", "Contributions waiting to be fetched.", "gauge", g(&self.fetch_queued)),
            (
                "datanet_fetch_queue_full_total",
                "Announcements dropped because the fetch queue was full.",
                "counter",
                g(&self.fetch_queue_full),
            ),
            (
                "datanet_catchup_discovered_total",
                "Contributions learned through catch-up.",
                "counter",
                g(&self.catchup_discovered),
            ),
            (
                "datanet_catchup_rejected_total",
                "Invalid contributions received through catch-up.",
                "counter",
                g(&self.catchup_rejected),
            ),
            (
                "datanet_peers_penalized_total",
                "Application score penalties given to peers.",
                "counter",
                g(&self.peers_penalized),
            ),
            ("datanet_epoch_messages_total", "Messages seen on epoch topics.", "counter", g(&self.epoch_messages)),
            (
                "datanet_sealed_pools_low",
                "Joined Datanets whose sealed evaluation pool runs low (extend it).",
                "gauge",
                g(&self.sealed_pools_low),
            ),
        ];
        for (name, help, kind, v) in rows {
            row(name, help, kind, v);
        }
        let _ = writeln!(out, "# HELP datanet_gossip_rejected_total Gossip messages rejected (sender loses score).");
        let _ = writeln!(out, "# TYPE datanet_gossip_rejected_total counter");
        for r in RejectReason::ALL {
            let _ = writeln!(out, "datanet_gossip_rejected_total{{reason=\"{}\"}} {}", r.label(), self.rejected(r));
        }
        out
    }
}
