//! The local testnet: N peers as separate `datanet run` processes on loopback, one folder each.
//!
//! [`up`] creates N identities, a Datanet whose committee they form and whose seed list is peer 0,
//! writes each peer's `config.toml`, starts the daemons (logs in `<peer>/daemon.log`, pid in
//! `<peer>/daemon.pid`) and waits until every peer sees the others. [`down`] stops them with
//! SIGTERM (then SIGKILL after a grace period). The scenario runner ([`scenario`]) drives steps
//! — contributions, training, epochs, kills and restarts — through the same CLI a volunteer uses.

pub mod scenario;

use crate::api::ApiClient;
use crate::codec::Signed;
use crate::daemon::Status;
use crate::identity::Identity;
use crate::ids::DatanetId;
use crate::manifest::ManifestFile;
use crate::store::Store;
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Coalition jobs per epoch on a testnet (all peers share one machine's cores).
pub const TESTNET_JOBS: u32 = 16;
/// Commit window on a testnet: every member's training jobs must fit in it (it ends as soon as
/// every assigned member has committed).
pub const TESTNET_COMMIT_WINDOW_MS: u64 = 900_000;
/// Reporters per job on a testnet: three, so that with five peers on one machine each trains
/// three fifths of the jobs rather than all of them.
pub const TESTNET_REPLICATION: u32 = 3;

/// How long `up` waits for the peers to find each other.
pub const MESH_TIMEOUT: Duration = Duration::from_secs(90);

/// What `up` created.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Testnet {
    pub dir: PathBuf,
    pub peers: Vec<PathBuf>,
    pub datanet: DatanetId,
    pub datanet_name: String,
}

impl Testnet {
    /// Reads `<dir>/testnet.json`.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let p = dir.join("testnet.json");
        let text = std::fs::read_to_string(&p)
            .with_context(|| format!("no testnet in {} (run `datanet testnet up` first)", dir.display()))?;
        Ok(serde_json::from_str(&text)?)
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Creates identities, the Datanet and configs for `n` peers in `dir` (which must not exist).
pub async fn create(dir: &Path, n: usize, manifest: &Path) -> anyhow::Result<Testnet> {
    if n == 0 {
        bail!("--peers must be at least 1");
    }
    if dir.exists() {
        bail!(
            "{} already exists; `datanet testnet down --dir {0}` and remove it, or choose another --dir",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir)?;
    let mut ids = Vec::new();
    let mut peers = Vec::new();
    for i in 0..n {
        let p = dir.join(format!("peer-{i}"));
        ids.push(Identity::init(&p)?);
        peers.push(p);
    }
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect::<anyhow::Result<_>>()?;
    let seed = format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", ports[0], crate::net::keys::peer_id(&ids[0].public_key())?);
    let mut file = ManifestFile::read(manifest)?;
    file.committee.members = ids.iter().map(|i| i.public_key().to_hex()).collect();
    file.committee.quorum = None;
    file.seeds = vec![seed.clone()];
    // Every member trains its share of the jobs inside the commit window, on one shared machine.
    file.protocol.jobs = TESTNET_JOBS.min(file.protocol.jobs_max);
    file.protocol.commit_window_ms = TESTNET_COMMIT_WINDOW_MS;
    file.protocol.view_timeout_ms = 15_000;
    file.protocol.replication = TESTNET_REPLICATION;
    let base = manifest.parent().unwrap_or(Path::new("."));
    let check = |s: &str| crate::net::parse_seed_addr(s).map(|_| ()).map_err(|e| e.to_string());
    let (mut m, blobs) = file.into_manifest(base, ids[0].public_key(), &check)?;
    crate::admission::parse_eval(&m, &blobs.public).context("eval.public")?;
    // Every peer of the testnet is a committee member: each gets the sealed pool, as the founder
    // would hand it over with `datanet datanet sealed export`.
    let pool = crate::admission::sealed::seal_manifest(&mut m, blobs.secret.as_deref()).context("eval.secret")?;
    let name = m.name.clone();
    let signed = Signed::sign(m, &ids[0].signing_key());
    let id = signed.body.id();
    // The testnet's own seed list: peer 0, also written into each config below.
    let seeds_file = std::fs::canonicalize(dir)?.join("seeds.toml");
    std::fs::write(&seeds_file, format!("seeds = [{seed:?}]\n"))?;
    for (i, p) in peers.iter().enumerate() {
        let store = Store::open(p).await?;
        store.put_blob(blobs.public.clone()).await?;
        store.put_manifest(&signed).await?;
        if let Some(pool) = &pool {
            store.put_sealed_pool(&id, pool).await?;
        }
        store.close().await?;
        let seeds = if i == 0 { String::new() } else { format!("{seed:?}") };
        let cfg = format!(
            "# written by `datanet testnet up`\n[net]\nlisten = [\"/ip4/127.0.0.1/tcp/{}\"]\nseeds = [{seeds}]\nseeds_file = {seeds_file:?}\n\
             gossip_mesh_n = {mesh}\n\n[datanets]\njoin = [\"{id}\"]\n",
            ports[i],
            mesh = n.saturating_sub(1).clamp(1, 6),
            seeds_file = seeds_file.display().to_string(),
        );
        std::fs::write(p.join("config.toml"), cfg)?;
    }
    let t = Testnet { dir: dir.to_path_buf(), peers, datanet: id, datanet_name: name };
    std::fs::write(dir.join("testnet.json"), serde_json::to_string_pretty(&t)?)?;
    Ok(t)
}

/// Starts peer `i`'s daemon in the background; its log goes to `<peer>/daemon.log`.
pub fn start_peer(t: &Testnet, i: usize) -> anyhow::Result<u32> {
    let p = &t.peers[i];
    let _ = std::fs::remove_file(p.join("api.addr"));
    let log = std::fs::OpenOptions::new().create(true).append(true).open(p.join("daemon.log"))?;
    let exe = std::env::current_exe()?;
    let child = Command::new(exe)
        .arg("--datadir")
        .arg(p)
        .arg("run")
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,datanet=info".into()))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting peer {i}"))?;
    let pid = child.id();
    std::fs::write(p.join("daemon.pid"), pid.to_string())?;
    // The child is reaped by the OS when we exit; we track it by pid.
    std::mem::forget(child);
    Ok(pid)
}

fn pid_of(p: &Path) -> Option<u32> {
    std::fs::read_to_string(p.join("daemon.pid")).ok()?.trim().parse().ok()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| s.contains(") Z ")).unwrap_or(true)
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).stderr(Stdio::null()).status();
}

/// Stops peer `i`: SIGTERM (or SIGKILL when `hard`), waiting up to 15 s before SIGKILL.
pub fn stop_peer(t: &Testnet, i: usize, hard: bool) -> anyhow::Result<()> {
    let p = &t.peers[i];
    let Some(pid) = pid_of(p) else { return Ok(()) };
    signal(pid, if hard { "KILL" } else { "TERM" });
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(pid) {
        signal(pid, "KILL");
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = std::fs::remove_file(p.join("daemon.pid"));
    Ok(())
}

/// The API client of peer `i`, once its daemon has written its address.
pub async fn client(t: &Testnet, i: usize, timeout: Duration) -> anyhow::Result<ApiClient> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(c) = ApiClient::from_datadir(&t.peers[i]) {
            if c.alive().await {
                return Ok(c);
            }
        }
        if Instant::now() > deadline {
            bail!("peer {i} did not start within {timeout:?}; see {}", t.peers[i].join("daemon.log").display());
        }
        if let Some(pid) = pid_of(&t.peers[i]) {
            if !alive(pid) {
                bail!("peer {i} exited; see {}", t.peers[i].join("daemon.log").display());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Peer `i`'s status through its API.
pub async fn status_of(t: &Testnet, i: usize) -> anyhow::Result<Status> {
    client(t, i, Duration::from_secs(5)).await?.get("/api/v1/status").await
}

/// Waits until every running peer sees at least `min_peers` others.
pub async fn wait_mesh(t: &Testnet, running: &[usize], timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let want = running.len().saturating_sub(1).min(6);
    for &i in running {
        loop {
            let s = status_of(t, i).await?;
            if s.peers >= want {
                break;
            }
            if Instant::now() > deadline {
                bail!("peer {i} sees {} peers after {timeout:?}, expected {want}", s.peers);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// `testnet up`: create (if needed) and start all peers, then wait for the mesh.
pub async fn up(dir: &Path, n: usize, manifest: &Path) -> anyhow::Result<Testnet> {
    let t = if dir.join("testnet.json").exists() { Testnet::load(dir)? } else { create(dir, n, manifest).await? };
    for i in 0..t.peers.len() {
        if pid_of(&t.peers[i]).is_some_and(alive) {
            continue;
        }
        start_peer(&t, i)?;
    }
    let all: Vec<usize> = (0..t.peers.len()).collect();
    for &i in &all {
        client(&t, i, Duration::from_secs(60)).await?;
    }
    wait_mesh(&t, &all, MESH_TIMEOUT).await?;
    Ok(t)
}

/// `testnet down`: stop every peer.
pub fn down(dir: &Path) -> anyhow::Result<()> {
    let t = Testnet::load(dir)?;
    for i in 0..t.peers.len() {
        stop_peer(&t, i, false)?;
    }
    Ok(())
}
