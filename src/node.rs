//! The launcher: a daemon with its local HTTP API in front of it, which is what `datanet run`
//! starts. It sits above both rooms, so the daemon never depends on the API that drives it.

use crate::api::{self, ApiServer};
use crate::config::Config;
use crate::daemon::{self, Daemon, DaemonError, DaemonHandle};
use std::path::Path;

/// A running daemon and its API server.
pub struct Node {
    daemon: Daemon,
    api: ApiServer,
}

/// Starts the daemon on `datadir`, then its API (`api.bind`); if the API cannot start, the
/// daemon is stopped again and the reason returned.
pub async fn start(datadir: &Path, config: Config) -> Result<Node, DaemonError> {
    let daemon = daemon::start(datadir, config.clone()).await?;
    match api::serve(datadir, &config.api, daemon.handle().clone()).await {
        Ok(api) => Ok(Node { daemon, api }),
        Err(e) => {
            daemon.shutdown().await;
            Err(DaemonError::Api(e.to_string()))
        }
    }
}

impl Node {
    /// The daemon's handle.
    pub fn handle(&self) -> &DaemonHandle {
        self.daemon.handle()
    }

    /// Stops the API first (no new requests), then the daemon.
    pub async fn shutdown(self) {
        self.api.shutdown().await;
        self.daemon.shutdown().await;
    }
}
