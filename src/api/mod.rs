//! The local HTTP API: how the CLI (and an operator's browser) talks to a running daemon.
//!
//! axum on `api.bind` (loopback unless `api.allow_non_loopback`). At start a fresh random token
//! is written to `<datadir>/api.cookie` (mode 0600) and the bound address to
//! `<datadir>/api.addr`, as bitcoind and Kubo do; every request must carry the token as
//! `Authorization: Bearer <token>` (or `?token=` for the status page in a browser), else 401.
//! `/metrics` alone may also take a stable metrics token or be open on loopback ([`metrics`]).
//!
//! Routes: `/` status page, `/metrics` OpenMetrics text, `/api/v1/status`, `/api/v1/peers`,
//! `POST /api/v1/join`, `POST /api/v1/contribute`.

pub mod epoch;
pub mod metrics;
mod page;

use crate::config::ApiConfig;
use crate::daemon::DaemonHandle;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use tokio::sync::oneshot;

/// The cookie file's name inside a datadir.
pub const COOKIE_FILE: &str = "api.cookie";
/// The file holding the bound API address.
pub const ADDR_FILE: &str = "api.addr";

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("api.bind {addr:?}: {reason}")]
    Bind { addr: String, reason: String },
    #[error("api.bind {0} is not loopback; set api.allow_non_loopback = true to expose it")]
    NotLoopback(SocketAddr),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("api.metrics_token_file {path}: {reason}")]
    MetricsToken { path: PathBuf, reason: String },
}

/// A running API server.
pub struct ApiServer {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl ApiServer {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting requests and waits for the server task.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        // Graceful shutdown waits for open keep-alive connections; do not wait forever.
        let mut task = self.task;
        if tokio::time::timeout(std::time::Duration::from_secs(5), &mut task).await.is_err() {
            task.abort();
        }
    }
}

#[derive(Clone)]
struct AppState {
    token: String,
    metrics: metrics::MetricsAccess,
    daemon: DaemonHandle,
}

/// Writes a secret file readable by its owner only (replaced, never widened), synced.
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> Result<(), ApiError> {
    let io = |source| ApiError::Io { path: path.to_path_buf(), source };
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
    f.write_all(contents).and_then(|_| f.sync_all()).map_err(io)
}

/// Binds the API, writes the cookie and address files, and serves until shut down.
pub async fn serve(datadir: &Path, cfg: &ApiConfig, daemon: DaemonHandle) -> Result<ApiServer, ApiError> {
    let bind: SocketAddr =
        cfg.bind.parse().map_err(|e| ApiError::Bind { addr: cfg.bind.clone(), reason: format!("{e}") })?;
    if !bind.ip().is_loopback() && !cfg.allow_non_loopback {
        return Err(ApiError::NotLoopback(bind));
    }
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|e| ApiError::Bind { addr: cfg.bind.clone(), reason: e.to_string() })?;
    let addr = listener.local_addr().map_err(|e| ApiError::Bind { addr: cfg.bind.clone(), reason: e.to_string() })?;
    let token = random_token();
    write_private(&datadir.join(COOKIE_FILE), token.as_bytes())?;
    daemon.set_api_addr(addr);
    write_private(&datadir.join(ADDR_FILE), addr.to_string().as_bytes())?;
    let metrics = metrics::MetricsAccess::from_config(datadir, cfg, addr)?;
    let state = AppState { token, metrics, daemon };
    let app = Router::new()
        .route("/", get(index))
        .route(metrics::PATH, get(metrics::metrics))
        .route("/api/v1/status", get(status))
        .route("/api/v1/peers", get(peers))
        .route("/api/v1/join", post(join))
        .route("/api/v1/datanets", post(create_datanet))
        .route("/api/v1/contribute", post(contribute))
        .merge(epoch::routes(state.daemon.clone()))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!(target: "datanet::api", error = %e, "api server stopped");
        }
    });
    tracing::info!(target: "datanet::api", %addr, "api listening");
    Ok(ApiServer { addr, stop, task })
}

/// A fresh random API token: 32 bytes from the OS, as 64 hex digits.
fn random_token() -> String {
    let mut raw = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut raw);
    hex::encode(raw)
}

/// Constant-time comparison of the presented token (`subtle`; a length mismatch ends early,
/// which reveals only the token's length).
fn token_matches(expected: &str, got: &str) -> bool {
    use subtle::ConstantTimeEq;
    expected.as_bytes().ct_eq(got.as_bytes()).into()
}

async fn auth(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let query = req
        .uri()
        .query()
        .and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "token"))
        .map(|(_, v)| v.into_owned());
    if metrics::authorized(req.uri().path(), bearer.or(query).as_deref(), &st.token, &st.metrics) {
        next.run(req).await
    } else {
        (StatusCode::UNAUTHORIZED, "missing or wrong API token (see <datadir>/api.cookie)\n").into_response()
    }
}

fn internal(e: impl std::fmt::Display) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, Json(serde_json::json!({"error": e.to_string()}))).into_response()
}

fn bad_request(e: impl std::fmt::Display) -> Response {
    (StatusCode::BAD_REQUEST, Json(serde_json::json!({"error": e.to_string()}))).into_response()
}

async fn status(State(st): State<AppState>) -> Response {
    match st.daemon.status().await {
        Ok(mut s) => {
            s.api = st.daemon.api_addr().map(|a| a.to_string());
            Json(s).into_response()
        }
        Err(e) => internal(e),
    }
}

async fn peers(State(st): State<AppState>) -> Response {
    Json(st.daemon.peers().await).into_response()
}

/// `POST /api/v1/join`: a signed manifest (hex of its canonical bytes), or a stored Datanet's
/// name, id or unique id prefix.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub manifest_hex: Option<String>,
    pub datanet: Option<String>,
}

/// `POST /api/v1/datanets`: create a Datanet from a manifest file on this machine (this peer
/// signs as founder), store it and join it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateRequest {
    pub path: PathBuf,
}

async fn create_datanet(State(st): State<AppState>, Json(req): Json<CreateRequest>) -> Response {
    match st.daemon.create(&req.path).await {
        Ok(c) => Json(c).into_response(),
        Err(e) => bad_request(e),
    }
}

async fn join(State(st): State<AppState>, Json(req): Json<JoinRequest>) -> Response {
    let res = if let Some(h) = req.manifest_hex {
        let bytes = match hex::decode(h.trim()) {
            Ok(b) => b,
            Err(e) => return bad_request(format!("manifest_hex: {e}")),
        };
        match crate::manifest::SignedManifest::decode_verified(&bytes) {
            Ok(m) => st.daemon.join(m).await,
            Err(e) => return bad_request(format!("manifest: {e}")),
        }
    } else if let Some(d) = req.datanet {
        st.daemon.join_key(&d).await
    } else {
        return bad_request("give manifest_hex or datanet");
    };
    match res {
        Ok(id) => Json(serde_json::json!({"joined": id.to_hex()})).into_response(),
        Err(e) => bad_request(e),
    }
}

/// `POST /api/v1/contribute`: a file on this machine to admit and announce.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContributeRequest {
    pub datanet: String,
    pub path: PathBuf,
    #[serde(default)]
    pub skip_invalid: bool,
}

async fn contribute(State(st): State<AppState>, Json(req): Json<ContributeRequest>) -> Response {
    match st.daemon.contribute(&req.datanet, &req.path, req.skip_invalid).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => bad_request(e),
    }
}

async fn index(State(st): State<AppState>) -> Response {
    let mut s = match st.daemon.status().await {
        Ok(s) => s,
        Err(e) => return internal(e),
    };
    s.api = st.daemon.api_addr().map(|a| a.to_string());
    let peers = st.daemon.peers().await;
    page::render(&s, &peers).into_response()
}

/// A client for the CLI: reads `<datadir>/api.addr` and `api.cookie`.
#[derive(Clone, Debug)]
pub struct ApiClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl ApiClient {
    /// The client for the daemon holding `datadir`, if its address and cookie files exist.
    pub fn from_datadir(datadir: &Path) -> Option<Self> {
        let addr = std::fs::read_to_string(datadir.join(ADDR_FILE)).ok()?;
        let token = std::fs::read_to_string(datadir.join(COOKIE_FILE)).ok()?;
        Some(ApiClient {
            base: format!("http://{}", addr.trim()),
            token: token.trim().to_string(),
            http: reqwest::Client::new(),
        })
    }

    /// A client for an explicit address and token.
    pub fn new(addr: SocketAddr, token: &str) -> Self {
        ApiClient { base: format!("http://{addr}"), token: token.to_string(), http: reqwest::Client::new() }
    }

    async fn check(r: reqwest::Response) -> anyhow::Result<reqwest::Response> {
        let status = r.status();
        if status.is_success() {
            return Ok(r);
        }
        let body = r.text().await.unwrap_or_default();
        let msg = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
            .unwrap_or(body);
        anyhow::bail!("daemon answered {status}: {}", msg.trim())
    }

    /// GET a JSON endpoint.
    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let r = self.http.get(format!("{}{path}", self.base)).bearer_auth(&self.token).send().await?;
        Ok(Self::check(r).await?.json().await?)
    }

    /// GET a text endpoint.
    pub async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let r = self.http.get(format!("{}{path}", self.base)).bearer_auth(&self.token).send().await?;
        Ok(Self::check(r).await?.text().await?)
    }

    /// POST JSON, get JSON.
    pub async fn post<B: Serialize, T: serde::de::DeserializeOwned>(&self, path: &str, body: &B) -> anyhow::Result<T> {
        let r = self.http.post(format!("{}{path}", self.base)).bearer_auth(&self.token).json(body).send().await?;
        Ok(Self::check(r).await?.json().await?)
    }

    /// Whether the daemon answers.
    pub async fn alive(&self) -> bool {
        let fut = self.http.get(format!("{}/api/v1/status", self.base)).bearer_auth(&self.token).send();
        matches!(tokio::time::timeout(std::time::Duration::from_secs(3), fut).await, Ok(Ok(r)) if r.status().is_success())
    }
}
