//! Fuzzes Merkle, credit and lineage inclusion proofs and the sealed evaluation pool file: arbitrary bytes are refused or round-trip exactly; never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for kind in ["merkle-proof", "credit-proof", "lineage-proof", "sealed-pool"] {
        let _ = datanet::wire::decode_as(kind, data);
    }
});
