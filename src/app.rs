//! Start and stop: restores endpoint state, publishes the first snapshot, binds the DNS
//! and admin listeners, runs the builder and the health monitor, reloads on request (see
//! [`crate::reload`]), and shuts everything down in order under one cancellation token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::{AdminServer, AdminState};
use crate::cluster::Fleet;
use crate::config::ConfigErrors;
use crate::dns::{DnsError, DnsServer};
use crate::health::{self, HealthHandle};
use crate::loaded::{ConfigSource, Loaded};
use crate::reload::{Reloaded, Reloader};
use crate::routing::resign::Resigner;
use crate::routing::{BuildEvent, Builder, Change, RoutingHandle};

/// Time allowed for in-flight queries once shutdown starts.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why gto could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A DNS listener could not be bound.
    #[error(transparent)]
    Dns(#[from] DnsError),
    /// The admin listener could not be bound.
    #[error("cannot listen on {addr} (admin API): {source}")]
    Admin {
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A running gto: listeners, builder task, health monitor, admin API.
#[derive(Debug)]
pub struct App {
    dns: DnsServer,
    admin: Option<AdminServer>,
    routing: RoutingHandle,
    events: mpsc::Sender<BuildEvent>,
    resigner: Resigner,
    builder_task: JoinHandle<()>,
    health: HealthHandle,
    health_task: JoinHandle<()>,
    reloader: Reloader,
    token: CancellationToken,
    bus: crate::events::Events,
    fleet: Option<Fleet>,
    fleet_task: Option<tokio::task::JoinHandle<()>>,
    /// The gto this process replaces, told to stop once this one serves.
    replaces: Option<i32>,
    /// A replacement this process started (SIGUSR2): set while it runs.
    replacement: Option<Arc<AtomicBool>>,
    /// The admin API's configured address (passed on with its socket).
    admin_configured: Option<SocketAddr>,
}

/// Logs what was loaded: each zone, and every warning.
fn log_loaded(loaded: &Loaded) {
    for zone in &loaded.zones {
        info!(
            zone = %zone.origin(),
            serial = zone.serial(),
            file = %zone.file().display(),
            names = zone.name_count(),
            "zone loaded"
        );
    }
    for warning in &loaded.warnings {
        warn!(%warning, "config warning");
    }
}

/// Endpoint state from the state file, when there is a usable one.
/// The config with the members added at run time that the state file keeps (with
/// `[cluster]`, the fleet's list replaces them once the store is read). When they no
/// longer fit the config, it starts without them and says why.
async fn with_runtime_members(
    source: &ConfigSource,
    loaded: Loaded,
    restored: Option<&health::store::StateFile>,
) -> Loaded {
    let Some(kept) = restored
        .map(|file| file.runtime_members.clone())
        .filter(|members| !members.is_empty())
    else {
        return loaded;
    };
    let source = source.clone();
    let count = kept.len();
    let merged = tokio::task::spawn_blocking(move || {
        source.load_within_with(crate::loaded::LOAD_TIMEOUT, kept)
    })
    .await;
    match merged {
        Ok(Ok(merged)) => {
            info!(
                members = merged.runtime.len(),
                "members added at run time restored from the state file"
            );
            merged
        }
        Ok(Err(errors)) => {
            for error in errors.iter() {
                warn!(%error, "a member added at run time does not fit the config");
            }
            warn!(
                members = count,
                "starting without the members added at run time"
            );
            loaded
        }
        Err(_) => loaded,
    }
}

/// The endpoints' states from the state file (read once, before the run-time members it
/// keeps were merged into `loaded`).
fn restore(
    loaded: &Loaded,
    restored: Option<health::store::StateFile>,
) -> (
    Option<health::store::StateFile>,
    crate::routing::EndpointStates,
) {
    let states = health::restore(loaded, restored.as_ref());
    let (down, drained) = states.counts();
    if down > 0 || drained > 0 {
        info!(down, drained, "endpoint state restored from the state file");
    }
    (restored, states)
}

/// Unless configured, TCP clients get what the open-file limit leaves after the probes,
/// the admin API and a reserve.
fn default_tcp_connections(admin_connections: usize) -> usize {
    crate::rlimit::nofile().map_or(crate::rlimit::MAX_DEFAULT_TCP_CONNECTIONS, |nofile| {
        crate::rlimit::default_tcp_connections(
            nofile,
            health::MAX_CONCURRENT_PROBES,
            admin_connections,
        )
    })
}

impl App {
    /// Restores endpoint state from the state file, publishes the first snapshot, binds the
    /// listeners, and starts the builder, the health checks and the admin API.
    pub async fn start(source: ConfigSource, loaded: Loaded) -> Result<Self, StartError> {
        Self::start_with(source, loaded, crate::handover::Inherited::default()).await
    }

    /// [`App::start`] on the sockets a replaced gto passed on ([`crate::handover`]).
    pub async fn start_with(
        source: ConfigSource,
        loaded: Loaded,
        mut inherited: crate::handover::Inherited,
    ) -> Result<Self, StartError> {
        let metrics = crate::metrics::install();
        // The state file, read once: the run-time members it keeps, then endpoint states.
        let state_file = health::store::load_or_ignore(
            loaded.config.server.state_file.as_deref(),
            "starting without it, every endpoint is re-checked",
        );
        let loaded = with_runtime_members(&source, loaded, state_file.as_ref()).await;
        log_loaded(&loaded);
        let settings = loaded.config.server.clone();
        let admin_settings = loaded.config.admin.clone();
        let loaded = Arc::new(loaded);
        let (restored, states) = restore(&loaded, state_file);
        let builder = Builder::with_states(loaded.clone(), states);
        let routing = builder.handle();
        // The first snapshot is published: ready as soon as the listeners are.
        let ready = Arc::new(AtomicBool::new(false));
        // Unless configured, TCP clients get what the open-file limit leaves after the
        // probes, the admin API and a reserve.
        let default_tcp = default_tcp_connections(admin_settings.max_connections);
        let dns =
            DnsServer::start_with(&settings, default_tcp, routing.clone(), &mut inherited).await?;
        let token = CancellationToken::new();
        let (events, receiver) = mpsc::channel(1024);
        let configs = builder.configs();
        // Changes as events, for `GET /v1/events`.
        let bus = crate::events::Events::new();
        let mut builder = builder;
        builder.report_to(bus.clone());
        let builder_task = tokio::spawn(builder.run(receiver, token.child_token()));
        // Re-signing and key events in the background (idle for unsigned zones).
        let mut resigner = Resigner::new(routing.clone(), events.clone(), configs);
        let (health, health_task) = health::spawn(
            &loaded,
            restored,
            settings.state_file.clone(),
            Some(events.clone()),
            token.child_token(),
        );
        health.report_to(bus.clone()).await;
        resigner.report_to(bus.clone());
        tokio::spawn(resigner.clone().maintain(token.child_token()));
        // Webhooks read the bus; they end with the token.
        let _webhooks = crate::webhook::start(&loaded.config.webhooks, &bus, token.child_token());
        let fleet = loaded.config.cluster.as_ref().map(|cluster| {
            let me = crate::cluster::InstanceInfo::starting(&loaded, dns.local_addrs());
            let fleet = Fleet::new(cluster, health.clone(), me, loaded.config.admin.max_drain);
            fleet.report_to(bus.clone());
            fleet
        });
        let admin_shared = Arc::new(ArcSwap::from_pointee(admin_settings.clone()));
        let reloader = Reloader::new(
            source,
            events.clone(),
            health.clone(),
            admin_shared.clone(),
            loaded.clone(),
            fleet.clone(),
            Some(bus.clone()),
        );
        if let Some(fleet) = &fleet {
            // The fleet's run-time members, applied like a reload when they differ from
            // what this instance runs.
            let (sink, mut lists) = mpsc::channel::<Vec<crate::runtime::RuntimeMember>>(16);
            fleet.follow_members(sink);
            let follower = reloader.clone();
            let stop = token.child_token();
            tokio::spawn(async move {
                loop {
                    let mut list = tokio::select! {
                        list = lists.recv() => match list {
                            Some(list) => list,
                            None => return,
                        },
                        () = stop.cancelled() => return,
                    };
                    let mut running = follower.runtime();
                    let order =
                        |m: &crate::runtime::RuntimeMember| (m.pool.clone(), m.name.clone());
                    list.sort_by_key(order);
                    running.sort_by_key(order);
                    if list == running {
                        continue;
                    }
                    if let Err(errors) = follower.set_runtime(list).await {
                        warn!(
                            problems = errors.len(),
                            "the fleet's members added at run time are refused here; this instance keeps its own"
                        );
                    }
                }
            });
        }
        let admin = match admin_settings.listen {
            None => None,
            Some(addr) => {
                let state = AdminState {
                    routing: routing.clone(),
                    health: health.clone(),
                    reloader: reloader.clone(),
                    settings: admin_shared,
                    metrics,
                    ready: ready.clone(),
                    started: std::time::SystemTime::now(),
                    fleet: fleet.clone(),
                    events: bus.clone(),
                    event_streams: crate::admin::EventStreams::default(),
                };
                let started = match inherited.take_admin(addr) {
                    Some(listener) => listener
                        .set_nonblocking(true)
                        .and_then(|()| tokio::net::TcpListener::from_std(listener))
                        .and_then(|listener| AdminServer::start_on(listener, state)),
                    None => AdminServer::start(addr, state).await,
                };
                match started {
                    Ok(server) => Some(server),
                    Err(source) => {
                        token.cancel();
                        return Err(StartError::Admin { addr, source });
                    }
                }
            }
        };
        let fleet_task = fleet.as_ref().map(|fleet| {
            if let Some(server) = &admin {
                fleet.set_admin(server.local_addr);
            }
            // One DNSSEC key timeline across the fleet (idle without signed zones).
            if loaded.config.zones.iter().any(|z| z.dnssec.is_some()) {
                tokio::spawn(
                    fleet
                        .clone()
                        .share_keys(resigner.clone(), token.child_token()),
                );
            }
            fleet.run(token.child_token())
        });
        ready.store(true, Ordering::Release);
        let unused = inherited.unused();
        if !unused.is_empty() {
            info!(addresses = ?unused, "sockets passed on for addresses the config no longer lists are closed");
        }
        Ok(Self {
            replaces: inherited.replaces(),
            replacement: None,
            admin_configured: admin_settings.listen,
            bus,
            fleet,
            fleet_task,
            dns,
            admin,
            routing,
            events,
            resigner,
            builder_task,
            health,
            health_task,
            reloader,
            token,
        })
    }

    /// Where DNS is served (UDP and TCP on each).
    pub fn dns_addrs(&self) -> &[SocketAddr] {
        self.dns.local_addrs()
    }

    /// Where the admin API listens, when enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.local_addr)
    }

    /// The routing table the listeners read.
    pub fn routing(&self) -> RoutingHandle {
        self.routing.clone()
    }

    /// Key maintenance and re-signing (what the background check runs every 2 s).
    pub fn resigner(&self) -> &Resigner {
        &self.resigner
    }

    /// Sends an event to the builder.
    pub fn events(&self) -> mpsc::Sender<BuildEvent> {
        self.events.clone()
    }

    /// Changes as events (what `GET /v1/events` streams).
    pub fn changes(&self) -> &crate::events::Events {
        &self.bus
    }

    /// This instance's part in the fleet, with `[cluster]`.
    pub fn fleet(&self) -> Option<&Fleet> {
        self.fleet.as_ref()
    }

    /// Endpoint state: health, drains, load, flips.
    pub fn health(&self) -> &HealthHandle {
        &self.health
    }

    /// Reads the config source and its zones again; see [`Reloader::reload`].
    pub async fn reload(&self) -> Result<Reloaded, ConfigErrors> {
        self.reloader.reload().await
    }

    /// Stops the probes (the state file is written), the fleet, the builder and the admin
    /// API while DNS still answers; then the DNS listeners last (in-flight queries finish
    /// within [`SHUTDOWN_GRACE`]), so that a restart's silence begins as late as it can:
    /// what is left after them is the process's exit.
    pub async fn shutdown(self) -> Result<(), DnsError> {
        self.token.cancel();
        // Join errors mean a task panicked, which was already logged.
        let _ = self.health_task.await;
        if let Some(task) = self.fleet_task {
            // It leaves the fleet (revokes its lease) within a second.
            let _ = task.await;
        }
        let _ = self.builder_task.await;
        if let Some(admin) = self.admin {
            admin.shutdown().await;
        }
        // Kept signatures still being written: finished while DNS answers, so that the
        // next start finds them.
        let _ = tokio::task::spawn_blocking(crate::dnssec::kept::finish_writes).await;
        let result = self.dns.shutdown(SHUTDOWN_GRACE).await;
        // Every answer is sent: the query log gets its last messages and its end.
        if let Some(tap) = self.routing.load_full().dnstap.clone() {
            tap.finish(Duration::from_secs(2)).await;
        }
        result
    }

    /// True when the builder answers and a query to the first listener gets a reply, both
    /// within a second: what the systemd watchdog vouches for.
    pub async fn alive(&self) -> bool {
        let (ping, generation) = BuildEvent::waited(Change::Ping);
        let builder = async { self.events.send(ping).await.is_ok() && generation.await.is_ok() };
        let Some(mut addr) = self.dns_addrs().first().copied() else {
            return false;
        };
        // A wildcard listener: ask it on loopback.
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        let snapshot = self.routing.load_full();
        // The first zone's SOA: answered by the same listener and path as every query, and
        // counted under no endpoint (a GSLB name would skew the answer shares).
        let Some(apex) = snapshot
            .zones
            .first()
            .map(|z| hickory_proto::rr::Name::from(&z.origin))
        else {
            return tokio::time::timeout(Duration::from_secs(1), builder)
                .await
                .unwrap_or(false);
        };
        let query = async {
            let mut message = hickory_proto::op::Message::new(
                rand::random(),
                hickory_proto::op::MessageType::Query,
                hickory_proto::op::OpCode::Query,
            );
            message.add_query(hickory_proto::op::Query::query(
                apex,
                hickory_proto::rr::RecordType::SOA,
            ));
            let Ok(bytes) = message.to_vec() else {
                return false;
            };
            let local: SocketAddr = if addr.is_ipv4() {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let Ok(socket) = tokio::net::UdpSocket::bind(local).await else {
                return false;
            };
            let mut reply = [0u8; 1500];
            socket.send_to(&bytes, addr).await.is_ok()
                && socket.recv(&mut reply).await.is_ok_and(|n| n >= 12)
        };
        tokio::time::timeout(Duration::from_secs(1), async {
            builder.await && query.await
        })
        .await
        .unwrap_or(false)
    }

    /// Serves until SIGTERM or SIGINT; SIGHUP reloads the config. `signals` were installed
    /// before the config was loaded; `reload_queued` is a SIGHUP that arrived meanwhile.
    /// Reloads run beside the signal loop, so SIGTERM wins over a slow or stuck reload.
    pub async fn run_until_signal(
        mut self,
        mut signals: crate::shutdown::Signals,
        reload_queued: bool,
    ) -> Result<(), DnsError> {
        let reload = |reloader: Reloader| {
            // Errors are logged and counted inside; the old config keeps serving.
            tokio::spawn(async move {
                let _ = reloader.reload().await;
            })
        };
        if reload_queued {
            info!("reloading: SIGHUP arrived during start-up");
            reload(self.reloader.clone());
        }
        match self.replaces {
            None => crate::notify::ready("serving"),
            Some(old) => {
                // Serving on the old process's sockets: it may stop now.
                crate::notify::ready_as_main("serving (replaced the previous process)");
                info!(
                    old,
                    "serving on the sockets passed on; telling the replaced gto to stop"
                );
                let old = nix::unistd::Pid::from_raw(old);
                if let Err(error) = nix::sys::signal::kill(old, nix::sys::signal::Signal::SIGTERM) {
                    warn!(%error, "could not tell the replaced gto to stop");
                }
            }
        }
        let watchdog = crate::notify::watchdog_period().map(|period| {
            // Ping at half the period, and only while the query path and builder answer:
            // a wedged gto is restarted by systemd.
            let every = period / 2;
            info!(every_ms = every.as_millis() as u64, "systemd watchdog on");
            every
        });
        let mut ticks = watchdog.map(tokio::time::interval);
        loop {
            let tick = async {
                match ticks.as_mut() {
                    Some(ticks) => {
                        ticks.tick().await;
                    }
                    None => std::future::pending().await,
                }
            };
            let signal = tokio::select! {
                signal = signals.next() => signal,
                () = tick => {
                    if self.alive().await {
                        crate::notify::watchdog();
                    } else {
                        warn!("liveness check failed: no watchdog ping");
                    }
                    continue;
                }
            };
            match signal {
                crate::shutdown::Signal::Reload => {
                    reload(self.reloader.clone());
                }
                crate::shutdown::Signal::Replace => self.replace(),
                crate::shutdown::Signal::Stop => {
                    // Stopped by the replacement (or while one starts): it reads the same
                    // sockets, so they are left open and readable.
                    let replaced = self
                        .replacement
                        .as_ref()
                        .is_some_and(|running| running.load(Ordering::Acquire));
                    if replaced {
                        info!("shutting down: the replacement serves on the same sockets");
                        self.dns.share_sockets();
                    } else {
                        info!("shutting down");
                        crate::notify::stopping();
                    }
                    return self.shutdown().await;
                }
            }
        }
    }
}

impl App {
    /// SIGUSR2: starts the binary at this process's path again (the new one after an
    /// upgrade) on this process's sockets ([`crate::handover`]). It stops this process
    /// once it serves; if it exits first, this process goes on serving.
    fn replace(&mut self) {
        if self
            .replacement
            .as_ref()
            .is_some_and(|running| running.load(Ordering::Acquire))
        {
            warn!("a replacement is already starting; SIGUSR2 ignored");
            return;
        }
        let mut passed = match self.dns.passable() {
            Ok(passed) => passed,
            Err(error) => {
                crate::handover::record_failure(&format!("cannot pass the sockets on: {error}"));
                return;
            }
        };
        if let (Some(admin), Some(configured)) = (&self.admin, self.admin_configured) {
            match admin.passable() {
                Ok(fd) => passed.push(crate::handover::Passed {
                    role: "admin",
                    configured,
                    kind: "tcp",
                    fd,
                }),
                Err(error) => {
                    crate::handover::record_failure(&format!(
                        "cannot pass the admin listener on: {error}"
                    ));
                    return;
                }
            }
        }
        let (exe, args) = crate::handover::invocation();
        let mut child = match crate::handover::spawn(&exe, &args, passed) {
            Ok(child) => child,
            Err(error) => {
                crate::handover::record_failure(&error.to_string());
                return;
            }
        };
        let pid = child.id().unwrap_or_default();
        info!(pid, exe = %exe.display(), "replacement started; it takes over once it serves");
        crate::handover::record_started(pid);
        let running = Arc::new(AtomicBool::new(true));
        self.replacement = Some(running.clone());
        tokio::spawn(async move {
            let status = child.wait().await;
            running.store(false, Ordering::Release);
            let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
            // Logged (once) and shown in status by record_failure.
            crate::handover::record_failure(&format!(
                "the replacement (pid {pid}) exited: {status}"
            ));
        });
    }
}

/// `gto explain`: the answer `client` would get for `name`, from the config and the state
/// file alone (nothing is bound, nothing is probed).
pub fn explain_offline(
    source: &ConfigSource,
    name: &str,
    qtype: Option<&str>,
    client: &str,
) -> Result<crate::routing::explain::Explanation, String> {
    let (name, qtype, client) =
        crate::routing::explain::parse_question(name, qtype, client).map_err(|e| e.to_string())?;
    let loaded = source.load().map_err(|e| e.to_string())?;
    let restored = health::store::load_or_ignore(
        loaded.config.server.state_file.as_deref(),
        "explaining as if every endpoint were up",
    );
    let loaded = Arc::new(loaded);
    let states = health::restore(&loaded, restored.as_ref());
    let builder = Builder::with_states(loaded, states);
    let snapshot = builder.handle().load_full();
    Ok(crate::routing::explain::explain(
        &snapshot, &name, qtype, client,
    ))
}
