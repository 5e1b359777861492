//! The daemon's counters, exposed with the net room's by `/metrics` in the OpenMetrics text
//! format through `prometheus-client` ([`DaemonMetrics::render`]).

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
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

    /// `(name, help, kind, value)` rows of the daemon's own counters, in the net room's layout
    /// (`NetMetrics::rows`); a counter's name ends in `_total`.
    fn rows(&self) -> Vec<(&'static str, &'static str, &'static str, u64)> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
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
        ]
    }

    /// A registry holding the current value of every daemon and net-room counter.
    ///
    /// The counters stay plain atomics in the rooms that bump them; each scrape registers a
    /// snapshot, and `prometheus-client` does the exposition format.
    pub fn registry(&self, net: &crate::net::NetMetrics) -> Registry {
        let mut reg = Registry::default();
        for (name, help, kind, v) in net.rows().into_iter().chain(self.rows()) {
            // The registry adds the help's full stop and a counter's `_total`.
            let help = help.trim_end_matches('.');
            match kind {
                "counter" => reg.register(name.trim_end_matches("_total"), help, ConstCounter::new(v)),
                _ => reg.register(name, help, ConstGauge::new(v)),
            }
        }
        let by_reason = RejectReason::ALL.map(|r| (r.label(), self.rejected(r)));
        reg.register("datanet_gossip_rejected", "Gossip messages rejected (sender loses score)", ByReason(by_reason));
        reg
    }

    /// The OpenMetrics text of every daemon and net-room counter (what `/metrics` serves).
    pub fn render(&self, net: &crate::net::NetMetrics) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry(net));
        out
    }
}

/// The content type of [`DaemonMetrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `datanet_gossip_rejected_total`, one series per [`RejectReason`], always in the same order.
#[derive(Debug)]
struct ByReason([(&'static str, u64); RejectReason::ALL.len()]);

impl TypedMetric for ByReason {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for ByReason {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (reason, v) in self.0 {
            let labels = [("reason", reason)];
            ConstCounter::new(v).encode(encoder.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The exposition is prometheus-client's OpenMetrics text and keeps today's names: every
    // counter of both rooms with its `_total`, the gauges without, one series per reject reason.
    #[test]
    fn render_keeps_the_names() {
        let m = DaemonMetrics::default();
        let net = crate::net::NetMetrics::default();
        DaemonMetrics::inc(&m.fetch_given_up);
        m.reject(RejectReason::BadSignature);
        m.fetch_queued.store(3, Ordering::Relaxed);
        crate::net::NetMetrics::inc(&net.seed_dial_failures);
        let text = m.render(&net);
        for line in [
            "# TYPE datanet_fetch_given_up counter",
            "# HELP datanet_fetch_given_up Contributions given up after every attempt failed.",
            "datanet_fetch_given_up_total 1",
            "datanet_fetch_queued 3",
            "# TYPE datanet_fetch_queued gauge",
            "datanet_seed_dial_failures_total 1",
            "datanet_gossip_rejected_total{reason=\"bad_signature\"} 1",
            "datanet_gossip_rejected_total{reason=\"oversize\"} 0",
            "datanet_peers_connected 0",
            "datanet_bytes_replicated_total 0",
            "datanet_sealed_pools_low 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
        for (name, _, _, _) in net.rows().into_iter().chain(m.rows()) {
            assert!(text.lines().any(|l| l.starts_with(&format!("{name} "))), "{name} missing");
        }
        assert!(!text.contains("_total_total"));
        // The Grafana dashboard charts exactly the series served.
        let served: std::collections::BTreeSet<&str> =
            text.lines().filter(|l| !l.starts_with('#')).map(|l| l.split([' ', '{']).next().unwrap()).collect();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/grafana-datanet.json");
        let dashboard = std::fs::read_to_string(path).unwrap();
        serde_json::from_str::<serde_json::Value>(&dashboard).expect("the dashboard is JSON");
        let charted: std::collections::BTreeSet<&str> = dashboard
            .match_indices("datanet_")
            .map(|(i, _)| {
                let rest = &dashboard[i..];
                &rest[..rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len())]
            })
            .collect();
        assert_eq!(charted, served, "config/grafana-datanet.json vs /metrics");
        // Every sample line is `name{labels} value` with an integer value.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = l.rsplit_once(' ').unwrap();
            v.parse::<u64>().unwrap_or_else(|_| panic!("{l}"));
        }
    }
}
