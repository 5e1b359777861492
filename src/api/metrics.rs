//! `/metrics` and who may scrape it.
//!
//! Every route takes the cookie token, which changes at every start; a scraper needs something
//! that survives restarts, so `/metrics` (and only it) also opens to the stable token of
//! `api.metrics_token_file`, or to anyone when `api.metrics_open` is set and the API is bound to
//! a loopback address. The text is `prometheus-client`'s ([`crate::daemon::metrics`]).

use super::{ApiError, AppState, token_matches, write_private};
use crate::config::ApiConfig;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The route this module serves.
pub const PATH: &str = "/metrics";

/// A metrics token must be at least this long (a generated one is 64 hex digits).
pub const METRICS_TOKEN_CHARS_MIN: usize = 16;

/// Who may read `/metrics` without the cookie token.
#[derive(Clone, Debug, Default)]
pub(super) struct MetricsAccess {
    /// The stable token of `api.metrics_token_file`.
    token: Option<String>,
    /// `api.metrics_open` on a loopback bind.
    open: bool,
}

impl MetricsAccess {
    /// Reads (or creates) the metrics token file and decides whether `/metrics` is open.
    pub(super) fn from_config(datadir: &Path, cfg: &ApiConfig, bound: SocketAddr) -> Result<Self, ApiError> {
        let token = match &cfg.metrics_token_file {
            Some(p) => Some(load_or_create_token(&datadir.join(p))?),
            None => None,
        };
        // `Config::validate` refuses `metrics_open` off loopback; this keeps the rule if it is bypassed.
        let open = cfg.metrics_open && bound.ip().is_loopback();
        Ok(MetricsAccess { token, open })
    }
}

/// The auth rule of every route: the cookie token opens everything; the metrics token, or
/// `metrics_open` on loopback, opens `/metrics` and nothing else.
pub(super) fn authorized(path: &str, presented: Option<&str>, cookie_token: &str, metrics: &MetricsAccess) -> bool {
    let presented = presented.map(str::trim);
    if presented.is_some_and(|t| token_matches(cookie_token, t)) {
        return true;
    }
    path == PATH
        && (metrics.open || matches!((&metrics.token, presented), (Some(want), Some(got)) if token_matches(want, got)))
}

/// The token in `path`, or a new random one written there (mode 0600) when the file is missing,
/// so the same token holds across restarts.
fn load_or_create_token(path: &Path) -> Result<String, ApiError> {
    let bad = |reason: String| ApiError::MetricsToken { path: path.to_path_buf(), reason };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let token = text.trim();
            if token.len() < METRICS_TOKEN_CHARS_MIN || token.chars().any(char::is_whitespace) {
                return Err(bad(format!(
                    "the token must be one word of at least {METRICS_TOKEN_CHARS_MIN} characters"
                )));
            }
            Ok(token.to_string())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = super::random_token();
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
            }
            write_private(path, token.as_bytes())?;
            tracing::info!(target: "datanet::api", path = %path.display(), "metrics token created");
            Ok(token)
        }
        Err(e) => Err(bad(e.to_string())),
    }
}

/// Where a relative `api.metrics_token_file` lies.
pub fn token_path(datadir: &Path, cfg: &ApiConfig) -> Option<PathBuf> {
    cfg.metrics_token_file.as_ref().map(|p| datadir.join(p))
}

/// `GET /metrics`
pub(super) async fn metrics(State(st): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, crate::daemon::metrics::CONTENT_TYPE)], st.daemon.render_metrics()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::identity::Identity;
    use std::time::Duration;

    fn access(token: Option<&str>, open: bool) -> MetricsAccess {
        MetricsAccess { token: token.map(String::from), open }
    }

    // The cookie token opens every route; the metrics token and `metrics_open` open `/metrics`
    // only; nothing else opens anything.
    #[test]
    fn auth_rule() {
        let cookie = "c".repeat(64);
        let stable = "m".repeat(64);
        for path in ["/", "/metrics", "/api/v1/status", "/api/v1/join"] {
            for a in [access(None, false), access(Some(&stable), false), access(None, true)] {
                assert!(authorized(path, Some(&cookie), &cookie, &a), "{path} {a:?}: the cookie token");
                assert!(!authorized(path, Some("wrong"), &cookie, &access(None, false)));
            }
            let is_metrics = path == PATH;
            assert_eq!(authorized(path, Some(&stable), &cookie, &access(Some(&stable), false)), is_metrics, "{path}");
            assert_eq!(authorized(path, None, &cookie, &access(None, true)), is_metrics, "{path}");
            assert!(!authorized(path, None, &cookie, &access(Some(&stable), false)), "{path} without a token");
            assert!(!authorized(path, Some("wrong"), &cookie, &access(Some(&stable), false)), "{path}");
            assert!(!authorized(path, Some(&stable), &cookie, &access(None, false)), "{path}: no metrics token set");
        }
        // Close relatives of the route are not it.
        for path in ["/metrics/", "/metricsx", "/api/v1/metrics"] {
            assert!(!authorized(path, None, &cookie, &access(None, true)), "{path}");
        }
    }

    // `metrics_open` opens only on a loopback bind, whatever the config says.
    #[test]
    fn open_only_on_loopback() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = ApiConfig { metrics_open: true, allow_non_loopback: true, ..ApiConfig::default() };
        let local = MetricsAccess::from_config(tmp.path(), &cfg, "127.0.0.1:9000".parse().unwrap()).unwrap();
        assert!(local.open);
        let v6 = MetricsAccess::from_config(tmp.path(), &cfg, "[::1]:9000".parse().unwrap()).unwrap();
        assert!(v6.open);
        let public = MetricsAccess::from_config(tmp.path(), &cfg, "10.1.2.3:9000".parse().unwrap()).unwrap();
        assert!(!public.open);
        assert!(!authorized(PATH, None, "cookie-token-xxxxxxxx", &public));
        // And the config refuses it outright.
        let c = Config { api: ApiConfig { bind: "0.0.0.0:9000".into(), ..cfg }, ..Config::default() };
        assert!(c.validate().unwrap_err().to_string().contains("api.metrics_open"));
    }

    // The token file is created once (private) inside the datadir and read back unchanged; a
    // short token is refused naming the file.
    #[test]
    fn token_file_is_stable() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let cfg = ApiConfig { metrics_token_file: Some("secrets/metrics.token".into()), ..ApiConfig::default() };
        let bound = "127.0.0.1:1".parse().unwrap();
        let a = MetricsAccess::from_config(tmp.path(), &cfg, bound).unwrap();
        let path = token_path(tmp.path(), &cfg).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let b = MetricsAccess::from_config(tmp.path(), &cfg, bound).unwrap();
        assert_eq!(a.token, b.token);
        assert_eq!(a.token.as_deref(), Some(std::fs::read_to_string(&path).unwrap().as_str()));
        std::fs::write(&path, "short\n").unwrap();
        let e = MetricsAccess::from_config(tmp.path(), &cfg, bound).unwrap_err().to_string();
        assert!(e.contains("metrics.token") && e.contains("api.metrics_token_file"), "{e}");
    }

    async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> u16 {
        let mut r = reqwest::Client::new().get(format!("http://{addr}{path}"));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        tokio::time::timeout(Duration::from_secs(10), r.send()).await.unwrap().unwrap().status().as_u16()
    }

    async fn start(datadir: &Path, api: ApiConfig) -> crate::node::Node {
        let start = crate::node::start(datadir, Config { api, ..Config::default() });
        tokio::time::timeout(Duration::from_secs(60), start).await.expect("daemon start timed out").unwrap()
    }

    // A real daemon: the metrics token survives a restart and opens `/metrics` only;
    // `metrics_open` serves `/metrics` without a token and still guards every other route.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scrape_without_the_cookie() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tok");
        Identity::init(&dir).unwrap();
        let api = ApiConfig { metrics_token_file: Some("metrics.token".into()), ..ApiConfig::default() };
        let d = start(&dir, api.clone()).await;
        let token = std::fs::read_to_string(dir.join("metrics.token")).unwrap();
        let addr = d.handle().api_addr().unwrap();
        assert_eq!(get(addr, PATH, Some(&token)).await, 200);
        assert_eq!(get(addr, PATH, None).await, 401);
        assert_eq!(get(addr, "/api/v1/status", Some(&token)).await, 401);
        assert_eq!(get(addr, "/", Some(&token)).await, 401);
        d.shutdown().await;
        let d = start(&dir, api).await;
        let addr = d.handle().api_addr().unwrap();
        assert_eq!(get(addr, PATH, Some(&token)).await, 200, "the same token after a restart");
        let body = reqwest::get(format!("http://{addr}{PATH}?token={token}")).await.unwrap().text().await.unwrap();
        assert!(body.contains("datanet_peers_connected") && body.ends_with("# EOF\n"), "{body}");
        d.shutdown().await;

        let dir = tmp.path().join("open");
        Identity::init(&dir).unwrap();
        let d = start(&dir, ApiConfig { metrics_open: true, ..ApiConfig::default() }).await;
        let addr = d.handle().api_addr().unwrap();
        assert_eq!(get(addr, PATH, None).await, 200);
        for path in ["/", "/api/v1/status", "/api/v1/peers"] {
            assert_eq!(get(addr, path, None).await, 401, "{path}");
        }
        d.shutdown().await;
    }
}
