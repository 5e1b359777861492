//! Every wire and stored decoder in one table, for the fuzz targets (`fuzz/`), the "arbitrary bytes
//! never panic" property test, and `datanet debug decode`.
//!
//! [`decode_as`] runs the real decoder (size limit first, then postcard, then the canonicality
//! check) and, for signed envelopes, the signature check. A successful decode must re-encode to
//! exactly the input bytes: the one-encoding rule, checked on every input a fuzzer finds.

use crate::codec::{self, Canonical, Signed};

/// The decoders, by name.
pub const KINDS: &[&str] = &[
    "contribution",
    "manifest",
    "merkle-proof",
    "peer-record",
    "contributions-message",
    "epoch-message",
    "certificate",
    "attestation",
    "credit-proof",
    "lineage",
    "lineage-proof",
    "epoch-snapshot",
    "contribution-meta",
];

fn plain<T: Canonical>(bytes: &[u8]) -> Result<(), String> {
    let v: T = codec::decode(bytes).map_err(|e| e.to_string())?;
    assert_eq!(codec::encode(&v), bytes, "a decoded value must re-encode to its input");
    Ok(())
}

fn signed<T: Canonical>(bytes: &[u8]) -> Result<(), String> {
    let v = Signed::<T>::decode_verified(bytes).map_err(|e| e.to_string())?;
    assert_eq!(v.to_bytes(), bytes, "a decoded envelope must re-encode to its input");
    Ok(())
}

/// Decodes `bytes` as `kind`; `Err` is a refusal (never a panic).
pub fn decode_as(kind: &str, bytes: &[u8]) -> Result<(), String> {
    use crate::attribution::epoch as ep;
    match kind {
        "contribution" => signed::<crate::admission::ContributionRecord>(bytes),
        "manifest" => signed::<crate::manifest::Manifest>(bytes),
        "merkle-proof" => plain::<crate::merkle::Proof>(bytes),
        "peer-record" => signed::<crate::net::record::PeerRecord>(bytes),
        "contributions-message" => plain::<crate::daemon::wire::ContributionsMessage>(bytes),
        "epoch-message" => plain::<ep::EpochMessage>(bytes),
        "certificate" => plain::<ep::Certificate>(bytes),
        "attestation" => plain::<ep::Attestation>(bytes),
        "credit-proof" => plain::<ep::CreditProof>(bytes),
        "lineage" => signed::<crate::trainer::lineage::Lineage>(bytes),
        "lineage-proof" => plain::<crate::trainer::lineage::LineageProof>(bytes),
        "epoch-snapshot" => plain::<ep::Snapshot>(bytes),
        "contribution-meta" => plain::<crate::store::contributions::ContributionMeta>(bytes),
        other => Err(format!("unknown kind `{other}` (one of {})", KINDS.join(", "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        // Arbitrary bytes never panic any decoder (they are refused or round-trip exactly).
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), k in 0usize..KINDS.len()) {
            let _ = decode_as(KINDS[k], &bytes);
        }
    }

    // A real signed contribution decodes; one flipped byte is refused.
    #[test]
    fn real_envelope_decodes_and_flip_is_refused() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
        let body = crate::admission::ContributionRecord {
            datanet: Default::default(),
            contributor: crate::ids::PeerKey(key.verifying_key().to_bytes()),
            created_ms: 1,
            root: Default::default(),
            records_root: Default::default(),
            record_count: 1,
            byte_count: 10,
            chunk_count: 1,
        };
        let mut bytes = Signed::sign(body, &key).to_bytes();
        assert!(decode_as("contribution", &bytes).is_ok());
        bytes[3] ^= 1;
        assert!(decode_as("contribution", &bytes).is_err());
    }
}
