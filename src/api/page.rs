//! The status page (`GET /`): the same [`Status`] as `datanet status`, rendered with maud (every
//! value escaped by construction) and refreshed by the browser every few seconds.

use crate::daemon::{DatanetStatus, Status};
use crate::net::PeerInfo;
use maud::{DOCTYPE, Markup, html};

/// Seconds between the page's own refreshes.
pub const REFRESH_SECS: u32 = 5;

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:2em;max-width:72em}\
    td,th{padding:2px 10px;text-align:left}th{background:#eee}\
    code,.id{font-family:monospace}.warn{color:#a40}.muted{color:#666}\
    section{border-top:1px solid #ccc;margin-top:1.5em}";

/// Milliseconds as a short human duration ("2 min 5 s").
fn duration(ms: u64) -> String {
    let s = ms.div_ceil(1000);
    match s {
        0 => "now".into(),
        1..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

fn short(hex: &str) -> &str {
    &hex[..hex.len().min(16)]
}

/// The whole page.
pub fn render(s: &Status, peers: &[PeerInfo]) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="refresh" content=(REFRESH_SECS);
                title { "datanet · " (short(&s.peer_key)) }
                style { (STYLE) }
            }
            body {
                h1 { "datanet peer " span.id { (short(&s.peer_key)) } }
                p {
                    "peer id " code { (s.peer_id) } br;
                    "listen " code { (s.listen.join(" ")) } br;
                    "blobs (iroh) " code { (s.iroh_addrs.join(" ")) } br;
                    (s.peers) " peers connected · fetches " (s.fetch_in_flight) " running, "
                    (s.fetch_queued) " queued · "
                    a href="/metrics" { "metrics" }
                }
                h2 id="datanets" { "Datanets (" (s.datanets.len()) ")" }
                @if s.datanets.is_empty() {
                    p.muted { "This daemon has joined no Datanet yet." }
                }
                @for d in &s.datanets { (datanet(d)) }
                @if !s.not_joined.is_empty() {
                    h2 id="not-joined" { "Stored here, not joined (" (s.not_joined.len()) ")" }
                    p.muted { "Nothing replicates and no epoch runs for these until they are joined." }
                    table {
                        tr { th { "datanet" } th { "id" } th { "to join it" } }
                        @for l in &s.not_joined {
                            tr { td { (l.name) } td.id { (short(&l.id)) } td { code { (l.join_with) } } }
                        }
                    }
                }
                h2 { "Peers (" (peers.len()) ")" }
                table {
                    tr { th { "peer" } th { "score" } th { "addresses" } }
                    @for p in peers {
                        tr {
                            td.id { (p.peer_id) }
                            td { (p.score.map(|x| format!("{x:.1}")).unwrap_or_default()) }
                            td.id { (p.addrs.join(" ")) }
                        }
                    }
                }
                p.muted { "Refreshes every " (REFRESH_SECS) " s." }
            }
        }
    }
}

fn datanet(d: &DatanetStatus) -> Markup {
    let e = &d.epoch;
    html! {
        section.datanet id={ "datanet-" (d.name) } {
            h3 { (d.name) " " small.id { (short(&d.id)) } }
            p {
                (d.contributions.len()) " contributions · " (d.mesh_peers) " mesh peers"
            }
            h4 { "Epoch" }
            p.epoch {
                @match &e.current {
                    Some(c) => {
                        "epoch " (c.epoch) ": " b.stage { (c.stage) }
                        " · heard from " (e.heard_from) " of " (e.committee) " committee members"
                        @if let Some(t) = e.next_deadline_in_ms { " · next deadline in " (duration(t)) }
                        br;
                        "jobs of this peer: " (e.jobs_measured) " of " (e.jobs_assigned) " measured"
                        @if e.training { " · " b { "training now" } }
                    }
                    None => {
                        "no epoch running here · epoch " (e.next_epoch)
                        @if e.next_opens_in_ms == 0 { " may start now" } @else { " opens in " (duration(e.next_opens_in_ms)) }
                    }
                }
                br;
                @if e.member { "this peer is on the committee (" (e.committee) " members)" }
                @else { "this peer is not on the committee (" (e.committee) " members)" }
            }
            @if let Some(err) = &e.last_error { p.warn { "last epoch problem: " (err) } }
            h4 { "Ledger and rewards" }
            p.ledger {
                @match d.ledger.head_epoch {
                    Some(h) => {
                        "head: epoch " (h) " " span.id { (d.ledger.head_hash.as_deref().map(short).unwrap_or("")) }
                        " · " (d.ledger.attested) " attested epochs"
                    }
                    None => { "no attested epoch yet" }
                }
                " · pool per epoch " (d.ledger.pool_per_epoch)
                br;
                "this peer: credit " b.credit { (d.mine.credit) } ", reward " b.reward { (d.mine.reward) }
                " over " (d.mine.epochs) " epochs"
            }
            @if let Some(sp) = &d.sealed {
                p {
                    "sealed evaluation pool: " (sp.epochs_left) " epochs left"
                    @if !sp.held { " · not held here (committee members import it)" }
                    @if sp.low { span.warn { " · LOW: the founder should extend it" } }
                }
            }
            h4 { "Contributions" }
            table.contributions {
                tr { th { "contribution" } th { "contributor" } th { "records" } th { "bytes" } th { "held by" } th { "source" } }
                @for c in &d.contributions {
                    tr {
                        td.id { (short(&c.id)) }
                        td.id { (&c.contributor[..c.contributor.len().min(8)]) }
                        td { (c.records) }
                        td { (c.bytes) }
                        td { (c.holders) " peers" }
                        td { (c.source) }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::{ContributionStatus, Earnings, EpochView, LedgerView, LocalDatanet};

    // The page escapes every value and shows each part of the story: epoch, ledger, earnings, contributions.
    #[test]
    fn page_escapes_and_tells_the_story() {
        let s = Status {
            peer_key: "ab".repeat(32),
            peer_id: "12D3<script>".into(),
            listen: vec![],
            iroh_addrs: vec![],
            api: None,
            peers: 2,
            fetch_in_flight: 0,
            fetch_queued: 1,
            datanets: vec![DatanetStatus {
                id: "cd".repeat(32),
                name: "bc<&>".into(),
                mesh_peers: 3,
                contributions: vec![ContributionStatus {
                    id: "ef".repeat(32),
                    contributor: "01".repeat(32),
                    records: 300,
                    bytes: 9000,
                    created_ms: 1,
                    source: "a\"b".into(),
                    holders: 4,
                }],
                sealed: None,
                epoch: EpochView {
                    committee: 5,
                    member: true,
                    next_epoch: 2,
                    next_opens_in_ms: 61_000,
                    ..Default::default()
                },
                ledger: LedgerView {
                    head_epoch: Some(1),
                    head_hash: Some("99".repeat(32)),
                    attested: 1,
                    pool_per_epoch: "1000000".into(),
                },
                mine: Earnings { credit: "42".into(), reward: "777".into(), epochs: 1 },
            }],
            not_joined: vec![LocalDatanet {
                id: "77".repeat(32),
                name: "wine".into(),
                join_with: "datanet join wine".into(),
            }],
        };
        let h = render(&s, &[]).into_string();
        assert!(!h.contains("<script>") && h.contains("12D3&lt;script&gt;"), "{h}");
        assert!(h.contains("bc&lt;&amp;&gt;") && h.contains("a&quot;b"), "{h}");
        assert!(h.contains("epoch 2 opens in 1 min 1 s"), "{h}");
        assert!(h.contains("head: epoch 1") && h.contains("reward <b class=\"reward\">777</b>"), "{h}");
        assert!(h.contains("4 peers") && h.contains("datanet join wine"), "{h}");
        assert!(h.contains("http-equiv=\"refresh\""), "{h}");
    }
}
