//! Fuzzes record validation and canonicalization: any bytes as a JSONL line of each task kind are
//! refused with an error or canonicalize to a form that canonicalizes to itself.
#![no_main]
use datanet::admission::canonical::canonicalize;
use datanet::manifest::TaskKind;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else { return };
    for task in [TaskKind::Text, TaskKind::Instruct, TaskKind::Tabular { features: 3, classes: 4 }] {
        if let Ok(c) = canonicalize(&task, v.clone(), 1 << 16) {
            let again = canonicalize(&task, c.value.clone(), 1 << 16).expect("canonical records stay valid");
            assert_eq!(again.bytes, c.bytes, "canonicalization is idempotent");
        }
    }
});
