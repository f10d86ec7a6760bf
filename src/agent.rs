//! `gto probe`: a probe-only agent. It runs the health checks of a config and publishes
//! its verdicts to the fleet (`[cluster]`, required), and serves no DNS and no admin API:
//! run it inside a private network or another cloud to add a vantage point.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cluster::{Fleet, InstanceInfo};
use crate::health;
use crate::loaded::Loaded;
use crate::shutdown::{Signal, Signals};

/// Why the agent cannot run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Without a fleet its verdicts would go nowhere.
    #[error("gto probe needs a [cluster] table: its verdicts are for the fleet")]
    NoCluster,
}

/// Probes and votes until SIGTERM or SIGINT.
pub async fn run(loaded: Loaded, mut signals: Signals) -> Result<(), AgentError> {
    let Some(cluster) = loaded.config.cluster.clone() else {
        return Err(AgentError::NoCluster);
    };
    let _metrics = crate::metrics::install();
    let state_file = loaded.config.server.state_file.clone();
    let restored =
        health::store::load_or_ignore(state_file.as_deref(), "every endpoint is re-checked");
    let loaded = Arc::new(loaded);
    // No builder: nothing here answers queries, so the monitor's changes go to the fleet
    // (and the state file) only.
    let token = CancellationToken::new();
    let (health, health_task) =
        health::spawn(&loaded, restored, state_file, None, token.child_token());
    let me = InstanceInfo::starting(&loaded, &[]);
    let fleet = Fleet::new(&cluster, health, me, loaded.config.admin.max_drain);
    let fleet_task = fleet.run(token.child_token());
    info!(instance = %cluster.instance, "probe agent running: health checks only, verdicts to the fleet");
    crate::notify::ready("probing");
    loop {
        match signals.next().await {
            Signal::Stop => break,
            Signal::Reload => {
                warn!("gto probe does not reload; restart it to read the config again");
            }
            Signal::Replace => {
                warn!("gto probe holds no sockets to pass on; restart it instead");
            }
        }
    }
    crate::notify::stopping();
    token.cancel();
    let _ = health_task.await;
    let _ = fleet_task.await;
    Ok(())
}
