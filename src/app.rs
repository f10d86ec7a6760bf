//! Start and stop: binds the listeners, runs the builder task, reloads on request, and
//! shuts everything down in order under one cancellation token.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use std::sync::Arc;

use crate::config::{ConfigError, ConfigErrors, ConfigSource, Loaded};
use crate::dns::{DnsError, DnsServer};
use crate::health::{self, HealthHandle};
use crate::metrics::{CONFIG_RELOADS_TOTAL, SNAPSHOT_GENERATION};
use crate::routing::{BuildEvent, Builder, RoutingHandle};

/// Time allowed for in-flight queries once shutdown starts.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running gto: listeners, builder task, and the config source for reloads.
#[derive(Debug)]
pub struct App {
    dns: DnsServer,
    routing: RoutingHandle,
    events: mpsc::Sender<BuildEvent>,
    builder_task: JoinHandle<()>,
    health: HealthHandle,
    health_task: JoinHandle<()>,
    token: CancellationToken,
    source: ConfigSource,
    listen: Vec<SocketAddr>,
}

impl App {
    /// Restores the last known health from the state file, publishes the first snapshot,
    /// binds the listeners, and starts the builder and the health checks.
    pub async fn start(source: ConfigSource, loaded: Loaded) -> Result<Self, DnsError> {
        crate::metrics::describe_all();
        let listen = loaded.config.server.listen.clone();
        let settings = loaded.config.server.clone();
        let restored =
            settings
                .state_file
                .as_deref()
                .and_then(|path| match health::store::load(path) {
                    Ok(file) => file,
                    Err(error) => {
                        warn!(%error, "state file ignored");
                        None
                    }
                });
        let loaded = Arc::new(loaded);
        let down = health::restore(&loaded, restored.as_ref());
        if !down.is_empty() {
            info!(
                count = down.len(),
                "endpoints restored as down from the state file"
            );
        }
        let builder = Builder::with_down(loaded.clone(), down);
        let routing = builder.handle();
        metrics::gauge!(SNAPSHOT_GENERATION).set(routing.load().generation as f64);
        let dns = DnsServer::start(&settings, routing.clone()).await?;
        let token = CancellationToken::new();
        let (events, receiver) = mpsc::channel(1024);
        let builder_task = tokio::spawn(builder.run(receiver, token.child_token()));
        let (health, health_task) = health::spawn(
            &loaded,
            restored,
            settings.state_file.clone(),
            events.clone(),
            token.child_token(),
        );
        Ok(Self {
            dns,
            routing,
            events,
            builder_task,
            health,
            health_task,
            token,
            source,
            listen,
        })
    }

    /// Health status and flips.
    pub fn health(&self) -> &HealthHandle {
        &self.health
    }

    /// Where DNS is served (UDP and TCP on each).
    pub fn dns_addrs(&self) -> &[SocketAddr] {
        self.dns.local_addrs()
    }

    /// The routing table the listeners read.
    pub fn routing(&self) -> RoutingHandle {
        self.routing.clone()
    }

    /// Sends an event to the builder (health, drains).
    pub fn events(&self) -> mpsc::Sender<BuildEvent> {
        self.events.clone()
    }

    /// Reads the config source and its zones again and, when valid, publishes a snapshot
    /// built from them. On any error the running snapshot stays and the errors are returned.
    pub async fn reload(&self) -> Result<u64, ConfigErrors> {
        let source = self.source.clone();
        let loaded = tokio::task::spawn_blocking(move || source.load())
            .await
            .map_err(|e| single_error(format!("reload task failed: {e}")))
            .and_then(|result| result);
        let loaded = match loaded {
            Ok(loaded) => loaded,
            Err(errors) => {
                metrics::counter!(CONFIG_RELOADS_TOTAL, "result" => "error").increment(1);
                warn!(
                    problems = errors.len(),
                    "reload rejected; the running config keeps serving"
                );
                for error in errors.iter() {
                    warn!(%error, "config problem");
                }
                return Err(errors);
            }
        };
        if loaded.config.server.listen != self.listen {
            warn!("[server] listen changed: listeners are kept until restart");
        }
        let loaded = Arc::new(loaded);
        let (done, generation) = oneshot::channel();
        let event = BuildEvent::Reload {
            loaded: loaded.clone(),
            done: Some(done),
        };
        if self.events.send(event).await.is_err() {
            return Err(single_error("the routing builder has stopped".into()));
        }
        let generation = generation
            .await
            .map_err(|_| single_error("the routing builder stopped during reload".into()))?;
        self.health.reconfigure(loaded).await;
        metrics::counter!(CONFIG_RELOADS_TOTAL, "result" => "ok").increment(1);
        metrics::gauge!(SNAPSHOT_GENERATION).set(generation as f64);
        info!(generation, "config reloaded");
        Ok(generation)
    }

    /// Stops the probes (the state file is written), then the listeners (in-flight
    /// queries finish within [`SHUTDOWN_GRACE`]), then the builder.
    pub async fn shutdown(self) -> Result<(), DnsError> {
        self.token.cancel();
        // Join errors mean a task panicked, which was already logged.
        let _ = self.health_task.await;
        let result = self.dns.shutdown(SHUTDOWN_GRACE).await;
        let _ = self.builder_task.await;
        result
    }

    /// Serves until SIGTERM or SIGINT; SIGHUP reloads the config.
    pub async fn run_until_signal(self) -> Result<(), DnsError> {
        let mut signals =
            crate::shutdown::Signals::new().map_err(|e| DnsError::Serve(e.to_string()))?;
        loop {
            match signals.next().await {
                crate::shutdown::Signal::Reload => {
                    // Errors are logged and counted inside; the old config keeps serving.
                    let _ = self.reload().await;
                }
                crate::shutdown::Signal::Stop => {
                    info!("shutting down");
                    return self.shutdown().await;
                }
            }
        }
    }
}

fn single_error(message: String) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        file: "<reload>".into(),
        line: None,
        path: String::new(),
        message,
    }])
}
