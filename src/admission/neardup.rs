//! Near-duplicate keys (DESIGN.md §4 step 2), pure and identical on every machine.
//!
//! Text: a 64-slot MinHash by one-permutation hashing over character 5-gram shingles of the
//! lowercased, whitespace-collapsed text (one hash per shingle, empty slots filled by rotation), and
//! 16 LSH bands of 4 slots to find candidates; the estimated Jaccard similarity is the fraction of
//! equal slots. Tabular: the label plus every feature rounded to a fixed number of significant
//! digits, hashed; records with equal keys are near-duplicates.

use serde_json::Value;

/// Slots in a MinHash signature.
pub const SLOTS: usize = 64;
/// LSH bands (SLOTS / BANDS slots each).
pub const BANDS: usize = 16;
const SHINGLE: usize = 5;

/// A MinHash signature.
pub type Signature = [u32; SLOTS];

fn mix64(mut z: u64) -> u64 {
    // splitmix64 finalizer: a fixed, portable 64-bit mixer.
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The text a record's near-duplicate signature is computed over.
pub fn record_text(v: &Value) -> String {
    let get = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("");
    if v.get("prompt").is_some() { format!("{}\n{}", get("prompt"), get("completion")) } else { get("text").to_string() }
}

/// The MinHash signature of `text`.
pub fn minhash(text: &str) -> Signature {
    let norm: Vec<char> = {
        let mut out = Vec::with_capacity(text.len());
        let mut space = false;
        for c in text.chars().flat_map(char::to_lowercase) {
            if c.is_whitespace() {
                if !space && !out.is_empty() {
                    out.push(' ');
                }
                space = true;
            } else {
                out.push(c);
                space = false;
            }
        }
        out
    };
    let mut sig = [u32::MAX; SLOTS];
    let mut filled = [false; SLOTS];
    let n = norm.len();
    let windows = if n <= SHINGLE { 1 } else { n - SHINGLE + 1 };
    for w in 0..windows {
        // FNV-1a over the shingle's code points, then mixed.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for c in &norm[w..(w + SHINGLE).min(n)] {
            h ^= *c as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let h = mix64(h);
        let slot = (h >> 58) as usize; // top 6 bits pick the slot
        let val = h as u32;
        if val <= sig[slot] {
            sig[slot] = val;
            filled[slot] = true;
        }
    }
    // Densify: an empty slot borrows from the next filled one (rotation), salted by distance.
    if filled.iter().any(|f| *f) {
        for i in 0..SLOTS {
            if !filled[i] {
                let mut j = (i + 1) % SLOTS;
                let mut d = 1u64;
                while !filled[j] {
                    j = (j + 1) % SLOTS;
                    d += 1;
                }
                sig[i] = mix64(sig[j] as u64 ^ (d << 32)) as u32;
            }
        }
    }
    sig
}

/// Estimated Jaccard similarity in parts per million.
pub fn similarity_ppm(a: &Signature, b: &Signature) -> u32 {
    let eq = a.iter().zip(b).filter(|(x, y)| x == y).count() as u64;
    (eq * 1_000_000 / SLOTS as u64) as u32
}

/// The LSH band keys of a signature: band index and a hash of its slots.
pub fn band_keys(sig: &Signature) -> [[u8; 9]; BANDS] {
    let per = SLOTS / BANDS;
    let mut out = [[0u8; 9]; BANDS];
    for (b, key) in out.iter_mut().enumerate() {
        let mut h = 0u64;
        for v in &sig[b * per..(b + 1) * per] {
            h = mix64(h ^ *v as u64);
        }
        key[0] = b as u8;
        key[1..].copy_from_slice(&h.to_be_bytes());
    }
    out
}

/// Signature as bytes for storage.
pub fn signature_bytes(sig: &Signature) -> Vec<u8> {
    sig.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Signature back from storage bytes.
pub fn signature_from_bytes(b: &[u8]) -> Option<Signature> {
    if b.len() != SLOTS * 4 {
        return None;
    }
    let mut s = [0u32; SLOTS];
    for (i, c) in b.chunks_exact(4).enumerate() {
        s[i] = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
    Some(s)
}

/// `x` rounded to `digits` significant digits, as text (portable: uses only formatting).
fn round_sig(x: f64, digits: u32) -> String {
    if x == 0.0 {
        return "0".into();
    }
    let d = digits.clamp(1, 17) as usize;
    let s = format!("{:.*e}", d - 1, x);
    if s.starts_with("-0") && s[1..].trim_start_matches(['0', '.']).starts_with('e') { "0".into() } else { s }
}

/// The near-duplicate key of a tabular record: BLAKE3 of its label and rounded features.
pub fn tabular_key(v: &Value, digits: u32) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("datanet/near-duplicate/tabular/v1");
    if let Some(l) = v.get("label") {
        h.update(l.to_string().as_bytes());
    }
    for x in v.get("features").and_then(Value::as_array).into_iter().flatten() {
        h.update(b"|");
        h.update(round_sig(x.as_f64().unwrap_or(0.0), digits).as_bytes());
    }
    *h.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // A one-word edit of a long text is near-identical; an unrelated text is not.
    #[test]
    fn minhash_separates_near_from_far() {
        let a = "The quick brown fox jumps over the lazy dog while the cat watches from the warm windowsill in the sun";
        let b = "The quick brown fox jumps over the lazy dog while the cat watches from the warm window sill in the sun";
        let c = "Completely different content about distributed consensus protocols and quorum certificates here";
        assert!(similarity_ppm(&minhash(a), &minhash(b)) > 700_000);
        assert!(similarity_ppm(&minhash(a), &minhash(c)) < 300_000);
        assert_eq!(minhash(a), minhash(&a.to_uppercase()));
    }

    // Jitter below the rounding precision gives the same tabular key; a label change does not.
    #[test]
    fn tabular_keys_quantize() {
        let a = json!({"features": [17.99, 0.1184], "label": 0});
        let b = json!({"features": [17.991, 0.11841], "label": 0});
        let c = json!({"features": [17.99, 0.1184], "label": 1});
        assert_eq!(tabular_key(&a, 3), tabular_key(&b, 3));
        assert_ne!(tabular_key(&a, 3), tabular_key(&c, 3));
        assert_ne!(tabular_key(&a, 6), tabular_key(&b, 6));
    }
}
