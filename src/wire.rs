//! Every wire and stored decoder in one table, for the fuzz targets (`fuzz/`) and the "arbitrary
//! bytes never panic" property test.
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
    "catchup-request",
    "catchup-response",
    "sealed-pool",
    "epoch-frame",
];

fn plain<T: Canonical>(bytes: &[u8]) -> Result<(), String> {
    let v: T = codec::decode(bytes).map_err(|e| e.to_string())?;
    assert_eq!(codec::encode(&v), bytes, "a decoded value must re-encode to its input");
    Ok(())
}

/// A catch-up frame: CBOR as libp2p's request-response codec reads it, after the codec's size bound.
/// CBOR has several encodings of one value, so the check is that a decoded value re-encodes to
/// bytes that decode to the same value (the signed payloads inside are canonical, checked by
/// their own kinds when the daemon decodes them).
fn cbor<T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug>(
    bytes: &[u8],
    max: u64,
) -> Result<(), String> {
    if bytes.len() as u64 > max {
        return Err(format!("{} bytes is over the {max}-byte bound", bytes.len()));
    }
    let v: T = cbor4ii::serde::from_slice(bytes).map_err(|e| e.to_string())?;
    let again = cbor4ii::serde::to_vec(Vec::new(), &v).map_err(|e| e.to_string())?;
    let back: T = cbor4ii::serde::from_slice(&again).map_err(|e| e.to_string())?;
    assert_eq!(back, v, "a decoded catch-up frame must survive a re-encode");
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
        "catchup-request" => cbor::<crate::net::catchup::CatchupRequest>(bytes, crate::net::catchup::REQUEST_BYTES_MAX),
        "catchup-response" => {
            cbor::<crate::net::catchup::CatchupResponse>(bytes, crate::net::catchup::RESPONSE_BYTES_MAX)
        }
        "sealed-pool" => plain::<crate::sealed::SealedPool>(bytes),
        "epoch-frame" => plain::<crate::daemon::wire::EpochFrame>(bytes),
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        // Every catch-up request and response the daemon can send is accepted as a frame.
        #[test]
        fn catchup_frames_round_trip(offset in any::<u64>(), limit in any::<u32>(), n in 0usize..20, fill in any::<u8>()) {
            use crate::net::catchup::{CatchupRequest, CatchupResponse};
            let d = crate::ids::DatanetId([fill; 32]);
            let reqs = [
                CatchupRequest::Hello { record: vec![fill; n] },
                CatchupRequest::Inventory { datanet: d, offset, limit },
                CatchupRequest::Get { datanet: d, ids: vec![crate::ids::ContributionId([fill; 32]); n] },
                CatchupRequest::Attestations { datanet: d, from_epoch: offset, limit },
            ];
            for r in reqs {
                let b = cbor4ii::serde::to_vec(Vec::new(), &r).unwrap();
                prop_assert!(decode_as("catchup-request", &b).is_ok());
            }
            let resps = [
                CatchupResponse::Inventory { ids: vec![crate::ids::ContributionId([fill; 32]); n], total: offset },
                CatchupResponse::Attestations { items: vec![vec![fill; n]; n] },
                CatchupResponse::Refused { reason: "x".repeat(n) },
            ];
            for r in resps {
                let b = cbor4ii::serde::to_vec(Vec::new(), &r).unwrap();
                prop_assert!(decode_as("catchup-response", &b).is_ok());
            }
        }
    }

    // A catch-up frame over the codec's bound is refused before decoding.
    #[test]
    fn oversize_catchup_frame_is_refused() {
        let big = vec![0u8; crate::net::catchup::REQUEST_BYTES_MAX as usize + 1];
        assert!(decode_as("catchup-request", &big).unwrap_err().contains("bound"));
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
