//! Canonical encoding and signed envelopes: the one signing boundary of the product.
//!
//! Every stored or wire type has exactly one byte encoding: postcard over a serde struct whose
//! field order is the layout. [`decode`] checks the type's size limit *before* decoding and refuses
//! any input that does not re-encode to the same bytes, so there is never a second encoding of the
//! same value to sign or hash. A signature is over `tag || bytes`, where the tag names the type and
//! version (`b"datanet/contribution/v1"`); verification is always `verify_strict`.

use crate::ids::PeerKey;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Largest encoded epoch message: the bound of every epoch wire type and of what they carry
/// (`attribution::epoch::messages` re-exports it; `sealed` bounds its extensions by it).
pub const EPOCH_MESSAGE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// A type with one canonical encoding and a size limit.
pub trait Canonical: Serialize + DeserializeOwned {
    /// Domain-separation tag, also used as the hashing context.
    const TAG: &'static [u8];
    /// Largest accepted encoding, checked before decoding.
    const MAX_BYTES: usize;
}

/// Why bytes were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("{what}: {len} bytes exceeds the limit of {max}")]
    TooLarge { what: &'static str, len: usize, max: usize },
    #[error("{what}: malformed encoding: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("{what}: encoding is not canonical")]
    NotCanonical { what: &'static str },
}

/// Why a signed envelope was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("signer key is not a valid ed25519 point")]
    BadKey,
    #[error("signature does not verify for signer {0}")]
    BadSignature(String),
    #[error("signed by {got}, expected {expected}")]
    WrongSigner { got: String, expected: String },
}

fn type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

/// The canonical bytes of `value`.
pub fn encode<T: Canonical>(value: &T) -> Vec<u8> {
    // Serializing our own plain structs into a Vec cannot fail.
    postcard::to_stdvec(value).expect("postcard encoding of an in-memory value")
}

/// Decodes canonical bytes: size limit first, then postcard, then a re-encoding check.
pub fn decode<T: Canonical>(bytes: &[u8]) -> Result<T, DecodeError> {
    let what = type_name::<T>();
    if bytes.len() > T::MAX_BYTES {
        return Err(DecodeError::TooLarge { what, len: bytes.len(), max: T::MAX_BYTES });
    }
    let value: T = postcard::from_bytes(bytes).map_err(|e| DecodeError::Malformed { what, reason: e.to_string() })?;
    if encode(&value) != bytes {
        return Err(DecodeError::NotCanonical { what });
    }
    Ok(value)
}

/// BLAKE3 of `tag || canonical bytes`: the content id of a canonical value.
pub fn hash<T: Canonical>(value: &T) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update(T::TAG);
    h.update(&encode(value));
    h.finalize()
}

/// The message an ed25519 signature covers: `tag || bytes`.
pub fn signing_message(tag: &[u8], bytes: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(tag.len() + bytes.len());
    m.extend_from_slice(tag);
    m.extend_from_slice(bytes);
    m
}

/// Signs `tag || bytes`.
pub fn sign_bytes(key: &SigningKey, tag: &[u8], bytes: &[u8]) -> [u8; 64] {
    key.sign(&signing_message(tag, bytes)).to_bytes()
}

/// Checks a signature over `tag || bytes` with `verify_strict`.
pub fn verify_bytes(signer: &PeerKey, tag: &[u8], bytes: &[u8], signature: &[u8; 64]) -> Result<(), VerifyError> {
    let vk = VerifyingKey::from_bytes(signer.as_bytes()).map_err(|_| VerifyError::BadKey)?;
    vk.verify_strict(&signing_message(tag, bytes), &Signature::from_bytes(signature))
        .map_err(|_| VerifyError::BadSignature(signer.short()))
}

/// A canonical value, its signer and the signer's signature over `T::TAG || encode(body)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed<T> {
    pub body: T,
    pub signer: PeerKey,
    #[serde(with = "sig_serde")]
    pub signature: [u8; 64],
}

mod sig_serde {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(s: &[u8; 64], ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_bytes(s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<[u8; 64], D::Error> {
        let v: &[u8] = <&[u8]>::deserialize(de)?;
        v.try_into().map_err(|_| serde::de::Error::invalid_length(v.len(), &"64 bytes"))
    }
}

impl<T: Canonical> Canonical for Signed<T> {
    const TAG: &'static [u8] = T::TAG;
    const MAX_BYTES: usize = T::MAX_BYTES + 32 + 64 + 8;
}

impl<T: Canonical> Signed<T> {
    /// Signs `body` with `key`.
    pub fn sign(body: T, key: &SigningKey) -> Self {
        let signature = sign_bytes(key, T::TAG, &encode(&body));
        Signed { body, signer: PeerKey(key.verifying_key().to_bytes()), signature }
    }

    /// Checks the signature (strict ed25519, domain tag of `T`).
    pub fn verify(&self) -> Result<(), VerifyError> {
        verify_bytes(&self.signer, T::TAG, &encode(&self.body), &self.signature)
    }

    /// Checks the signature and that `expected` signed it.
    pub fn verify_by(&self, expected: &PeerKey) -> Result<(), VerifyError> {
        if &self.signer != expected {
            return Err(VerifyError::WrongSigner { got: self.signer.short(), expected: expected.short() });
        }
        self.verify()
    }

    /// Decodes (size limit first) and verifies an envelope.
    pub fn decode_verified(bytes: &[u8]) -> Result<Self, VerifyError> {
        let s: Self = decode(bytes)?;
        s.verify()?;
        Ok(s)
    }

    /// The envelope's canonical bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Note {
        pub n: u64,
        pub text: String,
        pub blob: Vec<u8>,
    }
    impl Canonical for Note {
        const TAG: &'static [u8] = b"datanet/test-note/v1";
        const MAX_BYTES: usize = 4096;
    }

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    proptest! {
        // Encoding then decoding a signed envelope gives it back and it verifies.
        #[test]
        fn signed_round_trip(n in any::<u64>(), text in ".{0,64}", blob in proptest::collection::vec(any::<u8>(), 0..256)) {
            let s = Signed::sign(Note { n, text, blob }, &key(1));
            let bytes = s.to_bytes();
            let back = Signed::<Note>::decode_verified(&bytes).unwrap();
            prop_assert_eq!(back, s);
        }

        // Flipping any single bit of an envelope's bytes makes it fail to decode or to verify.
        #[test]
        fn any_bit_flip_fails(n in any::<u64>(), text in ".{0,32}", bit in any::<usize>()) {
            let s = Signed::sign(Note { n, text, blob: vec![1, 2, 3] }, &key(2));
            let mut bytes = s.to_bytes();
            let i = bit % (bytes.len() * 8);
            bytes[i / 8] ^= 1 << (i % 8);
            prop_assert!(Signed::<Note>::decode_verified(&bytes).is_err());
        }
    }

    // Bytes over the limit are refused before decoding is attempted.
    #[test]
    fn size_limit_checked_first() {
        let big = vec![0u8; Note::MAX_BYTES + 1];
        assert!(matches!(decode::<Note>(&big), Err(DecodeError::TooLarge { .. })));
    }

    // The same body signed under another tag does not verify: domain separation.
    #[test]
    fn domain_tag_separates() {
        let k = key(3);
        let body = Note { n: 1, text: "a".into(), blob: vec![] };
        let sig = sign_bytes(&k, b"datanet/other/v1", &encode(&body));
        let s = Signed { body, signer: PeerKey(k.verifying_key().to_bytes()), signature: sig };
        assert!(s.verify().is_err());
    }
}
