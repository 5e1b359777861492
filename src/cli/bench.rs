//! `datanet bench …`: benchmarks that print ratios against an anchor measured in the same run.
//!
//! `ingest` times the whole admission path (parse, validate, canonicalize, dedup, near-duplicate
//! signatures, chunking, blob store, sled commit and flush) on a generated JSONL file and compares
//! it with plain single-thread BLAKE3 over the same bytes.

use super::Global;
use crate::admission;
use crate::codec::Signed;
use crate::identity::Identity;
use crate::manifest::ManifestFile;
use crate::store::Store;
use clap::Subcommand;
use std::io::Write;
use std::time::Instant;

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Admission throughput vs plain BLAKE3 on a generated JSONL file.
    Ingest {
        /// Size of the generated file in MB.
        #[arg(long, default_value_t = 200)]
        mb: u64,
    },
    /// DatanetBench: attribution quality on one scenario (prints a RESULT line).
    Attribution(crate::bench::attribution::AttributionBenchArgs),
}

/// Runs a benchmark.
pub async fn run(cmd: BenchCmd, _g: &Global) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Ingest { mb } => ingest(mb).await,
        BenchCmd::Attribution(args) => crate::bench::attribution::run(args).await,
    }
}

/// Distinct pseudo-random text records of about 400 bytes, as JSONL (text Datanet).
pub fn generate_text_jsonl(bytes: u64) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "data", "model", "peer", "graph", "river", "stone", "quiet", "signal", "amber", "vector", "north", "carbon",
        "lattice", "harbor", "violet", "engine", "meadow", "proof", "kernel", "orbit", "cedar", "pixel", "tundra",
        "falcon", "copper", "summit", "ember", "delta", "canyon", "prism", "willow", "atlas",
    ];
    let mut out = Vec::with_capacity(bytes as usize + 1024);
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut i = 0u64;
    while (out.len() as u64) < bytes {
        let mut text = format!("record {i}:");
        for _ in 0..60 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            text.push(' ');
            text.push_str(WORDS[(x % WORDS.len() as u64) as usize]);
        }
        out.extend_from_slice(serde_json::json!({ "text": text }).to_string().as_bytes());
        out.push(b'\n');
        i += 1;
    }
    out
}

async fn ingest(mb: u64) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let eval = dir.join("eval.jsonl");
    std::fs::write(&eval, "{\"text\": \"held out example\", \"slice\": \"all\"}\n")?;
    let manifest_toml = format!(
        "name = \"ingest-bench\"\nlicense = \"CC0-1.0\"\nreward_pool = 1\n[task]\nkind = \"text\"\n\
         [admission]\ncontribution_bytes_max = {}\ncontribution_records_max = 10000000\n\
         [base_model]\nfamily = \"llama\"\npreset = \"tiny\"\n[eval]\npublic = \"eval.jsonl\"\n\
         slices = [{{ name = \"all\", weight = 1.0 }}]\n[committee]\nmembers = [\"self\"]\n",
        (mb + 64) << 20
    );
    let mpath = dir.join("m.toml");
    std::fs::write(&mpath, manifest_toml)?;
    eprintln!("generating {mb} MB of JSONL …");
    let data = generate_text_jsonl(mb << 20);
    let input = dir.join("input.jsonl");
    std::fs::File::create(&input)?.write_all(&data)?;
    let datadir = dir.join("peer");
    let identity = Identity::init(&datadir)?;
    let store = Store::open(&datadir).await?;
    let (manifest, blobs) = ManifestFile::read(&mpath)?.into_manifest(dir, identity.public_key(), &|_| Ok(()))?;
    store.put_blob(blobs.public).await?;
    let id = store.put_manifest(&Signed::sign(manifest.clone(), &identity.signing_key())).await?;

    // Anchor: plain single-thread BLAKE3 over the same bytes.
    let t = Instant::now();
    let mut h = blake3::Hasher::new();
    h.update(&data);
    let digest = h.finalize();
    let blake3_s = t.elapsed().as_secs_f64();
    std::hint::black_box(digest);

    let t = Instant::now();
    let parsed = admission::parse_input(&manifest, &input, false, None)?;
    let parse_s = t.elapsed().as_secs_f64();
    let t2 = Instant::now();
    let ack = admission::admit_local(&store, &identity, &id, parsed.records).await?;
    let commit_s = t2.elapsed().as_secs_f64();
    let total_s = t.elapsed().as_secs_f64();
    store.close().await?;

    let size_mb = data.len() as f64 / (1 << 20) as f64;
    let ingest = size_mb / total_s;
    let b3 = size_mb / blake3_s;
    println!("records            {}", ack.meta.records);
    println!("parse+canonicalize {:.2} s", parse_s);
    println!("pack+store+commit  {:.2} s (near-duplicate signatures, chunks, blob store, sled, flush)", commit_s);
    println!("admission total    {:.2} s = {:.1} MB/s", total_s, ingest);
    println!("blake3 (1 thread)  {:.3} s = {:.1} MB/s", blake3_s, b3);
    println!("RESULT ingest_mb_s={:.1} blake3_mb_s={:.1} ratio={:.3}", ingest, b3, ingest / b3);
    Ok(())
}
