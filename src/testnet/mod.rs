//! The local testnet: N peers as separate `datanet run` processes on loopback, one folder each.
//!
//! [`up`] creates N identities, a Datanet whose committee they form and whose seed list is peer 0,
//! writes each peer's `config.toml`, starts the daemons (logs in `<peer>/daemon.log`) and waits
//! until every peer sees the others. [`down`] stops them with SIGTERM (then SIGKILL after a grace
//! period). Daemons are signalled through pidfds only: the process that started one keeps its
//! child handle (and reaps it); `testnet down` from another process opens a pidfd for the pid in
//! `<peer>/daemon.pid` and uses it only if the process's start time matches the one recorded
//! there, so a reused pid is never signalled. The scenario runner ([`scenario`]) drives steps
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

/// A testnet daemon process, held by a pidfd so that no signal can reach another process that
/// reused its pid. The process that started it also holds its [`Child`] and reaps it.
pub struct Daemon {
    pidfd: rustix::fd::OwnedFd,
    child: Option<std::process::Child>,
}

impl Daemon {
    /// The daemon recorded in `<peer>/daemon.pid` (`pid start-time`), when that pid still names the
    /// same process: the pidfd is opened first and the start time checked after, so a reused pid
    /// is refused rather than signalled. `None` for no file, a stale one, or a process that exited.
    fn open(peer: &Path) -> Option<Daemon> {
        let text = std::fs::read_to_string(peer.join(PID_FILE)).ok()?;
        let mut parts = text.split_whitespace();
        let pid: i32 = parts.next()?.parse().ok()?;
        let started: u64 = parts.next()?.parse().ok()?;
        let pidfd =
            rustix::process::pidfd_open(rustix::process::Pid::from_raw(pid)?, rustix::process::PidfdFlags::empty())
                .ok()?;
        (start_time(pid as u32) == Some(started)).then_some(Daemon { pidfd, child: None })
    }

    /// Whether it is still running (its pidfd is not yet readable).
    fn running(&self) -> bool {
        !self.exited_within(Duration::ZERO)
    }

    /// Waits up to `d` for it to exit; true once it has (and reaps it when it is our child).
    fn exited_within(&self, d: Duration) -> bool {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let mut fds = [PollFd::new(&self.pidfd, PollFlags::IN)];
        let t = Timespec { tv_sec: d.as_secs() as i64, tv_nsec: d.subsec_nanos() as i64 };
        loop {
            match poll(&mut fds, Some(&t)) {
                Ok(n) => return n > 0,
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return true,
            }
        }
    }

    fn signal(&self, sig: rustix::process::Signal) {
        let _ = rustix::process::pidfd_send_signal(&self.pidfd, sig);
    }

    /// SIGTERM (SIGKILL when `hard`), then SIGKILL if it has not exited within 15 s; reaps our
    /// child.
    fn stop(mut self, hard: bool) {
        use rustix::process::Signal;
        self.signal(if hard { Signal::KILL } else { Signal::TERM });
        if !self.exited_within(Duration::from_secs(15)) {
            self.signal(Signal::KILL);
            self.exited_within(Duration::from_secs(5));
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }
}

/// Where a daemon's `pid start-time` is recorded for `testnet down` from another process.
const PID_FILE: &str = "daemon.pid";

/// A process's start time in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

/// Daemons this process started, by peer folder: held until stopped.
fn started() -> &'static std::sync::Mutex<std::collections::BTreeMap<PathBuf, Daemon>> {
    static STARTED: std::sync::OnceLock<std::sync::Mutex<std::collections::BTreeMap<PathBuf, Daemon>>> =
        std::sync::OnceLock::new();
    STARTED.get_or_init(Default::default)
}

/// The daemon of `peer`: the one this process started, else the one its pid file names.
fn take_daemon(peer: &Path) -> Option<Daemon> {
    let ours = started().lock().expect("testnet process table").remove(peer);
    ours.or_else(|| Daemon::open(peer))
}

/// Whether `peer`'s daemon is running.
fn peer_running(peer: &Path) -> bool {
    if let Some(d) = started().lock().expect("testnet process table").get(peer) {
        return d.running();
    }
    Daemon::open(peer).is_some_and(|d| d.running())
}

/// Starts peer `i`'s daemon in the background; its log goes to `<peer>/daemon.log`. Returns its pid.
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
    let pidfd =
        rustix::process::pidfd_open(rustix::process::Pid::from_child(&child), rustix::process::PidfdFlags::empty())
            .with_context(|| format!("pidfd of peer {i}"))?;
    // A pid file for `testnet down` from another process; it is checked against the start time.
    let started_at = start_time(pid).with_context(|| format!("start time of peer {i}"))?;
    std::fs::write(p.join(PID_FILE), format!("{pid} {started_at}\n"))?;
    started().lock().expect("testnet process table").insert(p.clone(), Daemon { pidfd, child: Some(child) });
    Ok(pid)
}

/// Stops peer `i`: SIGTERM (or SIGKILL when `hard`), waiting up to 15 s before SIGKILL. Only the
/// process this testnet started is signalled (through its pidfd); a stale pid file is removed.
pub fn stop_peer(t: &Testnet, i: usize, hard: bool) -> anyhow::Result<()> {
    let p = &t.peers[i];
    if let Some(d) = take_daemon(p) {
        d.stop(hard);
    }
    let _ = std::fs::remove_file(p.join(PID_FILE));
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
        if !peer_running(&t.peers[i]) {
            bail!("peer {i} exited; see {}", t.peers[i].join("daemon.log").display());
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
        if peer_running(&t.peers[i]) {
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

#[cfg(test)]
mod tests {
    use super::*;

    // A pid file names a process only together with its start time: a live pid with another start
    // time (a reused pid) is refused, the right one is opened, a garbled file is ignored.
    #[test]
    fn pid_file_is_checked_against_the_start_time() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id();
        let t = start_time(me).expect("our own start time");
        std::fs::write(dir.path().join(PID_FILE), format!("{me} {}\n", t + 1)).unwrap();
        assert!(Daemon::open(dir.path()).is_none(), "a reused pid must not be signalled");
        std::fs::write(dir.path().join(PID_FILE), format!("{me} {t}\n")).unwrap();
        let d = Daemon::open(dir.path()).expect("the recorded process");
        assert!(d.running());
        std::fs::write(dir.path().join(PID_FILE), "12 x").unwrap();
        assert!(Daemon::open(dir.path()).is_none());
    }

    // A started child is signalled and reaped through its own handle, and seen as exited.
    #[test]
    fn child_is_stopped_through_its_pidfd() {
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let pidfd =
            rustix::process::pidfd_open(rustix::process::Pid::from_child(&child), rustix::process::PidfdFlags::empty())
                .unwrap();
        let d = Daemon { pidfd, child: Some(child) };
        assert!(d.running());
        let probe = Daemon {
            pidfd: rustix::process::pidfd_open(
                rustix::process::Pid::from_raw(d.child.as_ref().unwrap().id() as i32).unwrap(),
                rustix::process::PidfdFlags::empty(),
            )
            .unwrap(),
            child: None,
        };
        d.stop(false);
        assert!(probe.exited_within(Duration::from_secs(1)));
    }
}
