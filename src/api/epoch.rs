//! Epoch routes of the local API: `POST /api/v1/epoch/run` (body [`EpochRunRequest`]) starts the
//! next epoch of a Datanet at this peer; `GET /api/v1/epoch/status` lists every joined Datanet's
//! running epoch and ledger head; `GET /api/v1/epoch/attestation?datanet=D[&epoch=N]` returns an
//! attested epoch's canonical bytes (hex), for `datanet attestation export` while the daemon runs;
//! `GET /api/v1/rewards?datanet=D` the ledger's totals, for `datanet rewards` while it runs.

use crate::daemon::DaemonHandle;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

/// The epoch routes, with their own state; the caller adds the token check.
pub fn routes<S: Clone + Send + Sync + 'static>(daemon: DaemonHandle) -> Router<S> {
    Router::new()
        .route("/api/v1/epoch/run", post(run))
        .route("/api/v1/epoch/status", get(status))
        .route("/api/v1/epoch/attestation", get(attestation))
        .route("/api/v1/rewards", get(rewards))
        .with_state(daemon)
}

/// Body of `POST /api/v1/epoch/run`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochRunRequest {
    /// Datanet id or name.
    pub datanet: String,
}

fn error(code: StatusCode, e: impl std::fmt::Display) -> Response {
    (code, Json(serde_json::json!({"error": e.to_string()}))).into_response()
}

async fn run(State(d): State<DaemonHandle>, Json(req): Json<EpochRunRequest>) -> Response {
    match d.epoch_run(&req.datanet).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

async fn status(State(d): State<DaemonHandle>) -> Response {
    match d.epoch_status().await {
        Ok(s) => Json(s).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// Query of `GET /api/v1/epoch/attestation`.
#[derive(Debug, Deserialize)]
pub struct AttestationQuery {
    pub datanet: String,
    pub epoch: Option<u64>,
}

async fn attestation(State(d): State<DaemonHandle>, Query(q): Query<AttestationQuery>) -> Response {
    match d.epoch_attestation(&q.datanet, q.epoch).await {
        Ok((epoch, bytes)) => Json(serde_json::json!({"epoch": epoch, "hex": hex::encode(bytes)})).into_response(),
        Err(e) => error(StatusCode::NOT_FOUND, e),
    }
}

/// Query of `GET /api/v1/rewards`.
#[derive(Debug, Deserialize)]
pub struct RewardsQuery {
    pub datanet: String,
}

async fn rewards(State(d): State<DaemonHandle>, Query(q): Query<RewardsQuery>) -> Response {
    match d.rewards(&q.datanet).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => error(StatusCode::NOT_FOUND, e),
    }
}
