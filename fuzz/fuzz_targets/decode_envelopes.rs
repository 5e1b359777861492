//! Fuzzes signed envelopes: contribution records, peer records, lineage manifests: arbitrary bytes are refused or round-trip exactly; never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for kind in ["contribution", "peer-record", "lineage", "contributions-message", "contribution-meta"] {
        let _ = datanet::wire::decode_as(kind, data);
    }
});
