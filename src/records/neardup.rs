//! Near-duplicate keys (DESIGN.md §4 step 2), pure and identical on every machine.
//!
//! Text: a 64-slot MinHash by one-permutation hashing over character 5-gram shingles of the
//! lowercased, whitespace-collapsed text (one hash per shingle, empty slots filled by rotation), and
//! 16 LSH bands of 4 slots to find candidates; the estimated Jaccard similarity is the fraction of
//! equal slots. Tabular: up to 8 band keys (label plus a band of features rounded to `digits − 1`
//! significant digits) find candidates; a candidate is a near-duplicate when the label is equal and
//! every feature is within half a unit of the `digits`-th significant digit.

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
    if v.get("prompt").is_some() {
        format!("{}\n{}", get("prompt"), get("completion"))
    } else {
        get("text").to_string()
    }
}

/// The MinHash signature of `text`.
pub fn minhash(text: &str) -> Signature {
    let norm: Vec<u32> = {
        let mut out = Vec::with_capacity(text.len());
        let mut space = false;
        let mut push = |c: char| {
            if c.is_whitespace() {
                if !space && !out.is_empty() {
                    out.push(' ' as u32);
                }
                space = true;
            } else {
                out.push(c as u32);
                space = false;
            }
        };
        for c in text.chars() {
            if c.is_ascii() { push(c.to_ascii_lowercase()) } else { c.to_lowercase().for_each(&mut push) }
        }
        out
    };
    let mut sig = [u32::MAX; SLOTS];
    let mut filled = [false; SLOTS];
    let n = norm.len();
    // Each shingle's polynomial hash over its code points (rolled from the previous one), mixed.
    const B: u64 = 0x0000_0100_0000_01b3;
    let width = n.min(SHINGLE);
    let top = B.wrapping_pow((width as u32).saturating_sub(1));
    let mut h = norm[..width].iter().fold(0u64, |h, c| h.wrapping_mul(B).wrapping_add(*c as u64 + 1));
    for w in 0..=(n - width) {
        if w > 0 {
            h = h
                .wrapping_sub(top.wrapping_mul(norm[w - 1] as u64 + 1))
                .wrapping_mul(B)
                .wrapping_add(norm[w + width - 1] as u64 + 1);
        }
        let m = mix64(h);
        let slot = (m >> 58) as usize; // top 6 bits pick the slot
        let val = m as u32;
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

/// The LSH band keys of a signature: per band, a 64-bit hash of its slots salted by the band
/// index (a shared key means an equal band; a rare 64-bit collision only adds a candidate, which
/// the similarity check then rejects).
pub fn band_keys(sig: &Signature) -> [u64; BANDS] {
    let per = SLOTS / BANDS;
    let mut out = [0u64; BANDS];
    for (b, key) in out.iter_mut().enumerate() {
        let mut h = mix64(b as u64 + 1);
        for v in &sig[b * per..(b + 1) * per] {
            h = mix64(h ^ *v as u64);
        }
        *key = h;
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

/// A tabular record's label and features.
pub fn tabular_parts(v: &Value) -> (String, Vec<f64>) {
    let label = v.get("label").map(|l| l.to_string()).unwrap_or_default();
    let feats =
        v.get("features").and_then(Value::as_array).into_iter().flatten().map(|x| x.as_f64().unwrap_or(0.0)).collect();
    (label, feats)
}

/// Candidate keys of a tabular record: the label plus one band of features rounded to
/// `digits − 1` significant digits, for up to 8 bands. A near-duplicate matches an earlier record
/// in at least one band unless its jitter crosses a rounding boundary in every band.
pub fn tabular_band_keys(v: &Value, digits: u32) -> Vec<u64> {
    let (label, feats) = tabular_parts(v);
    let bands = feats.len().clamp(1, 8);
    let per = feats.len().div_ceil(bands).max(1);
    (0..bands)
        .map(|b| {
            let mut h = blake3::Hasher::new_derive_key("datanet/near-duplicate/tabular/v1");
            h.update(label.as_bytes());
            h.update(&(b as u32).to_le_bytes());
            for x in feats.iter().skip(b * per).take(per) {
                h.update(b"|");
                h.update(round_sig(*x, digits.saturating_sub(1).max(1)).as_bytes());
            }
            u64::from_be_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
        })
        .collect()
}

/// Whether two tabular records are near-duplicates: same label, and every feature within half a
/// unit of the `digits`-th significant digit of the larger magnitude.
pub fn tabular_near(a: &[f64], b: &[f64], digits: u32) -> bool {
    let tol = 0.5 * 10f64.powi(1 - digits.clamp(1, 17) as i32);
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol * x.abs().max(y.abs()) + f64::MIN_POSITIVE)
}

/// Features as bytes for storage.
pub fn features_bytes(f: &[f64]) -> Vec<u8> {
    f.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Features back from storage bytes.
pub fn features_from_bytes(b: &[u8]) -> Vec<f64> {
    b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // Empty and shorter-than-a-shingle texts have a signature (no panic), equal for equal text.
    #[test]
    fn short_texts_have_signatures() {
        assert_eq!(minhash(""), minhash("  "));
        assert_eq!(minhash("abc"), minhash("ABC"));
        assert_ne!(minhash("abc"), minhash("abd"));
    }

    // A one-word edit of a long text is near-identical; an unrelated text is not.
    #[test]
    fn minhash_separates_near_from_far() {
        let a = "The quick brown fox jumps over the lazy dog while the cat watches from the warm windowsill in the sun";
        let b =
            "The quick brown fox jumps over the lazy dog while the cat watches from the warm window sill in the sun";
        let c = "Completely different content about distributed consensus protocols and quorum certificates here";
        assert!(similarity_ppm(&minhash(a), &minhash(b)) > 700_000);
        assert!(similarity_ppm(&minhash(a), &minhash(c)) < 300_000);
        assert_eq!(minhash(a), minhash(&a.to_uppercase()));
    }

    // Small jitter keeps at least one shared band key and passes the distance check; a label
    // change or a large change does not.
    #[test]
    fn tabular_near_duplicates() {
        let a = json!({"features": [17.99, 0.1184, 122.8, 1001.0], "label": 0});
        let b = json!({"features": [17.991, 0.11841, 122.81, 1001.1], "label": 0});
        let c = json!({"features": [17.99, 0.1184, 122.8, 1001.0], "label": 1});
        let ka = tabular_band_keys(&a, 3);
        assert!(tabular_band_keys(&b, 3).iter().any(|k| ka.contains(k)));
        assert!(!tabular_band_keys(&c, 3).iter().any(|k| ka.contains(k)));
        let (_, fa) = tabular_parts(&a);
        let (_, fb) = tabular_parts(&b);
        assert!(tabular_near(&fa, &fb, 3));
        assert!(!tabular_near(&fa, &[18.5, 0.1184, 122.8, 1001.0], 3));
    }
}
