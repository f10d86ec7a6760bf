//! Reloading: reads the config and its zones again off the query path, refuses what
//! would serve wrong (invalid files, a zone caught half-written), hands a valid one to the
//! builder and the health monitor, and says what changed and what needs a restart.
//! Shared by SIGHUP and `POST /v1/reload`, one reload at a time.

use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::{Mutex, mpsc};
use tracing::{info, warn};

use crate::config::{AdminSettings, ConfigError, ConfigErrors};
use crate::health::HealthHandle;
use crate::loaded::{ConfigSource, LOAD_TIMEOUT, Loaded};
use crate::metrics::CONFIG_RELOADS_TOTAL;
use crate::routing::{BuildEvent, Change};

/// Reloads config and zones; shared by SIGHUP and `POST /v1/reload`, one at a time.
#[derive(Clone, Debug)]
pub struct Reloader(Arc<ReloaderInner>);

impl Reloader {
    /// A reloader of `source`, now serving `running`.
    pub(crate) fn new(
        source: ConfigSource,
        events: mpsc::Sender<BuildEvent>,
        health: HealthHandle,
        admin: Arc<ArcSwap<AdminSettings>>,
        running: Arc<Loaded>,
        fleet: Option<crate::cluster::Fleet>,
        bus: Option<crate::events::Events>,
    ) -> Self {
        Self(Arc::new(ReloaderInner {
            source,
            events,
            health,
            admin,
            fleet,
            bus,
            digest: ArcSwap::from_pointee(running.digest().to_string()),
            runtime: std::sync::Mutex::new({
                metrics::gauge!(crate::metrics::RUNTIME_MEMBERS).set(running.runtime.len() as f64);
                running.runtime.clone()
            }),
            bound: running.config.clone(),
            running: Mutex::new(running),
            last: Arc::new(ArcSwapOption::empty()),
            tried: Mutex::new(0),
        }))
    }
}

#[derive(Debug)]
struct ReloaderInner {
    source: ConfigSource,
    events: mpsc::Sender<BuildEvent>,
    health: HealthHandle,
    admin: Arc<ArcSwap<AdminSettings>>,
    /// The fleet, told the new config digest.
    fleet: Option<crate::cluster::Fleet>,
    /// Reload outcomes are reported here.
    bus: Option<crate::events::Events>,
    /// Members added at run time, merged into the config at every load.
    runtime: std::sync::Mutex<Vec<crate::runtime::RuntimeMember>>,
    /// The config and zones being served; also the reload lock (one at a time).
    running: Mutex<Arc<Loaded>>,
    /// The config gto started with: what listeners and tasks that only a restart changes
    /// run with, so a setting changed and changed back needs no restart.
    bound: crate::config::Config,
    /// The outcome of the last reload, for status.
    last: Arc<ArcSwapOption<ReloadOutcome>>,
    /// Reloads tried; held for a whole reload, so outcomes are numbered in order.
    tried: Mutex<u64>,
    /// Digest of the config and zones being served.
    digest: ArcSwap<String>,
}

/// What a reload applies: the config read now (with these run-time members, or the
/// running ones), or one read already.
enum Input {
    Read(Option<Vec<crate::runtime::RuntimeMember>>),
    Loaded(Box<Loaded>),
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Reloaded {
    /// Generation of the snapshot built from the new config.
    pub generation: u64,
    /// What changed, in words ("zone gto.example.com. serial 1 -> 2", "pool sma: +1 -0
    /// endpoints").
    pub changes: Vec<String>,
    /// Settings that changed but only take effect at a restart (listeners, TCP limits,
    /// the state file).
    pub needs_restart: Vec<String>,
}

/// The last reload's outcome, as status shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReloadOutcome {
    /// Reloads tried since start, this one included (1, 2, ...): `gto reload` waits for it
    /// to grow.
    pub number: u64,
    /// When it finished (RFC 3339).
    pub at: String,
    /// "ok" or "rejected".
    pub result: &'static str,
    /// The problems of a rejected reload, or the changes of a good one.
    pub details: Vec<String>,
    /// Settings that need a restart.
    pub needs_restart: Vec<String>,
}

impl Reloader {
    /// Reads the config source and its zones again and, when valid, publishes a snapshot
    /// built from them (parsing and building happen off the query path). On any error the
    /// running snapshot stays, and the errors are logged, counted and returned.
    pub async fn reload(&self) -> Result<Reloaded, ConfigErrors> {
        self.reload_with(Input::Read(None)).await
    }

    /// Where the config comes from.
    pub fn source(&self) -> ConfigSource {
        self.0.source.clone()
    }

    /// The members added at run time that the running config holds.
    pub fn runtime(&self) -> Vec<crate::runtime::RuntimeMember> {
        self.0
            .runtime
            .lock()
            .map(|runtime| runtime.clone())
            .unwrap_or_default()
    }

    /// Applies `runtime` as the members added at run time, like a reload (the config file
    /// read again with them merged in). Refused, nothing changes and the problems are
    /// returned (by field for a run-time member's own).
    pub async fn set_runtime(
        &self,
        runtime: Vec<crate::runtime::RuntimeMember>,
    ) -> Result<Reloaded, ConfigErrors> {
        self.reload_with(Input::Read(Some(runtime))).await
    }

    /// Reads the config with `runtime` as the members added at run time, without applying
    /// it: what [`Reloader::apply_loaded`] then applies (so a change is validated before
    /// the fleet is told, and read once).
    pub async fn load_with_runtime(
        &self,
        runtime: Vec<crate::runtime::RuntimeMember>,
    ) -> Result<Loaded, ConfigErrors> {
        let source = self.0.source.clone();
        tokio::task::spawn_blocking(move || source.load_within_with(LOAD_TIMEOUT, runtime))
            .await
            .map_err(|e| single_error(format!("reload task failed: {e}")))?
    }

    /// Applies a config read by [`Reloader::load_with_runtime`], like a reload.
    pub async fn apply_loaded(&self, loaded: Loaded) -> Result<Reloaded, ConfigErrors> {
        self.reload_with(Input::Loaded(Box::new(loaded))).await
    }

    async fn reload_with(&self, input: Input) -> Result<Reloaded, ConfigErrors> {
        let mut tried = self.0.tried.lock().await;
        *tried += 1;
        let number = *tried;
        crate::notify::reloading();
        let result = self.reload_inner(input).await;
        crate::dnssec::kept::forget_read_ahead();
        crate::notify::ready("serving");
        let outcome = match &result {
            Ok(reloaded) => ReloadOutcome {
                number,
                at: crate::time::rfc3339(std::time::SystemTime::now()),
                result: "ok",
                details: reloaded.changes.clone(),
                needs_restart: reloaded.needs_restart.clone(),
            },
            Err(errors) => ReloadOutcome {
                number,
                at: crate::time::rfc3339(std::time::SystemTime::now()),
                result: "rejected",
                details: errors.iter().map(ToString::to_string).collect(),
                needs_restart: Vec::new(),
            },
        };
        if let Some(events) = &self.0.bus {
            events.emit(
                "reload",
                serde_json::json!({
                    "result": outcome.result,
                    "generation": result.as_ref().ok().map(|r| r.generation),
                    "details": outcome.details,
                    "needs_restart": outcome.needs_restart,
                }),
            );
        }
        self.0.last.store(Some(Arc::new(outcome)));
        result
    }

    /// The config being served (waits for a reload under way).
    pub async fn running(&self) -> Arc<Loaded> {
        self.0.running.lock().await.clone()
    }

    /// Digest of the config and zone files being served (see [`Loaded::digest`]).
    pub fn digest(&self) -> Arc<String> {
        self.0.digest.load_full()
    }

    /// The last reload's outcome, if any reload ran.
    pub fn last(&self) -> Option<Arc<ReloadOutcome>> {
        self.0.last.load_full()
    }

    async fn reload_inner(&self, input: Input) -> Result<Reloaded, ConfigErrors> {
        let inner = &self.0;
        let mut running = inner.running.lock().await;
        // The signed zones' kept signatures are read while the config and zones are: a
        // preparation that signs takes them ready (dropped after the reload otherwise).
        crate::dnssec::kept::read_ahead(crate::dnssec::kept::paths_of(&running.config));
        let loaded = match input {
            Input::Loaded(loaded) => Ok(*loaded),
            Input::Read(runtime) => {
                let runtime = runtime.unwrap_or_else(|| self.runtime());
                self.load_with_runtime(runtime).await
            }
        };
        let loaded = loaded.and_then(|loaded| {
            let shrunk = shrunk_zones(&running, &loaded);
            if shrunk.is_empty() {
                Ok(loaded)
            } else {
                Err(ConfigErrors(shrunk))
            }
        });
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
        for warning in &loaded.warnings {
            warn!(%warning, "config warning");
        }
        let needs_restart = needs_restart(&inner.bound, &loaded.config);
        for setting in &needs_restart {
            warn!(setting = %setting, "changed, but only takes effect at a restart");
        }
        let mut changes = describe_changes(&running, &loaded);
        // Run-time members the file now overrides (or whose pool it dropped) say so.
        changes.extend(
            loaded
                .warnings
                .iter()
                .filter(|w| w.path == "runtime")
                .map(|w| w.message.clone()),
        );
        inner.admin.store(Arc::new(AdminSettings {
            // The listener and its limits stay as bound; token and drain bound apply now.
            listen: inner.admin.load().listen,
            max_connections: inner.admin.load().max_connections,
            header_timeout: inner.admin.load().header_timeout,
            ..loaded.config.admin.clone()
        }));
        let loaded = Arc::new(loaded);
        // Which members were added at run time, before any answer or status shows them
        // (status marks a member `runtime` from this list: set after the snapshot, a
        // member could be answered and listed for a moment as one of the config file's).
        if let Ok(mut runtime) = inner.runtime.lock() {
            *runtime = loaded.runtime.clone();
        }
        metrics::gauge!(crate::metrics::RUNTIME_MEMBERS).set(loaded.runtime.len() as f64);
        let (event, generation) = BuildEvent::waited(Change::Reload(loaded.clone()));
        if inner.events.send(event).await.is_err() {
            return Err(single_error("the routing builder has stopped".into()));
        }
        let generation = generation
            .await
            .map_err(|_| single_error("the routing builder stopped during reload".into()))?;
        inner.health.reconfigure(loaded.clone()).await;
        inner.digest.store(Arc::new(loaded.digest().to_string()));
        if let Some(fleet) = &inner.fleet {
            fleet.set_digest(loaded.digest(), loaded.digest_sections());
        }
        *running = loaded;
        metrics::counter!(CONFIG_RELOADS_TOTAL, "result" => "ok").increment(1);
        info!(
            generation,
            changes = %if changes.is_empty() { "none".to_string() } else { changes.join("; ") },
            "config reloaded"
        );
        Ok(Reloaded {
            generation,
            changes,
            needs_restart,
        })
    }
}

/// Settings a reload cannot apply to running listeners or tasks.
fn needs_restart(old: &crate::config::Config, new: &crate::config::Config) -> Vec<String> {
    let (a, b) = (&old.server, &new.server);
    let mut changed = Vec::new();
    let mut check = |name: &str, differs: bool| {
        if differs {
            changed.push(name.to_string());
        }
    };
    check("server.listen", a.listen != b.listen);
    check("server.udp_payload", a.udp_payload != b.udp_payload);
    check(
        "server.tcp_idle_timeout",
        a.tcp_idle_timeout != b.tcp_idle_timeout,
    );
    check(
        "server.tcp_max_connections",
        a.tcp_max_connections != b.tcp_max_connections,
    );
    check(
        "server.tcp_max_queries",
        a.tcp_max_queries != b.tcp_max_queries,
    );
    check("server.tcp_threads", a.tcp_threads != b.tcp_threads);
    check("server.workers", a.workers != b.workers);
    check("server.udp_coalesce", a.udp_coalesce != b.udp_coalesce);
    check("server.state_file", a.state_file != b.state_file);
    check(
        "server.state_file_follow_symlinks",
        a.state_file_follow_symlinks != b.state_file_follow_symlinks,
    );
    check("admin.listen", old.admin.listen != new.admin.listen);
    check("cluster", old.cluster != new.cluster);
    check("health", old.health != new.health);
    check("notify.webhook", old.webhooks != new.webhooks);
    check(
        "admin.max_connections",
        old.admin.max_connections != new.admin.max_connections,
    );
    check(
        "admin.header_timeout",
        old.admin.header_timeout != new.admin.header_timeout,
    );
    changed
}

/// Zones that lost more than half of their names while the SOA serial did not increase
/// (RFC 1982 arithmetic): most likely a file read while being rewritten in place. Such a
/// reload is refused; zone files should be replaced atomically (write, then rename).
fn shrunk_zones(old: &Loaded, new: &Loaded) -> Vec<ConfigError> {
    let mut problems = Vec::new();
    for zone in &new.zones {
        let Some(before) = old.zones.iter().find(|z| z.origin() == zone.origin()) else {
            continue;
        };
        let (had, has) = (before.name_count(), zone.name_count());
        if has * 2 >= had || serial_increased(before.serial(), zone.serial()) {
            continue;
        }
        problems.push(ConfigError {
            file: zone.file().to_path_buf(),
            line: None,
            path: String::new(),
            message: format!(
                "zone {} would shrink from {had} to {has} names while its SOA serial did not \
                 increase ({} -> {}): a file caught while being rewritten? Replace zone files \
                 atomically (write a new file, then rename it over the old one), or raise the \
                 serial when the shrink is meant",
                zone.origin(),
                before.serial(),
                zone.serial()
            ),
        });
    }
    problems
}

/// RFC 1982 serial number arithmetic: `new` is greater than `old`.
fn serial_increased(old: u32, new: u32) -> bool {
    let distance = new.wrapping_sub(old);
    distance != 0 && distance < 1 << 31
}

/// What a reload changes, in a few words per item.
fn describe_changes(old: &Loaded, new: &Loaded) -> Vec<String> {
    let mut changes = Vec::new();
    for zone in &new.zones {
        match old.zones.iter().find(|z| z.origin() == zone.origin()) {
            None => changes.push(format!("zone {} added", zone.origin())),
            Some(before)
                if before.serial() != zone.serial() || before.name_count() != zone.name_count() =>
            {
                changes.push(format!(
                    "zone {} serial {} -> {}, {} -> {} names",
                    zone.origin(),
                    before.serial(),
                    zone.serial(),
                    before.name_count(),
                    zone.name_count()
                ));
            }
            Some(_) => {}
        }
    }
    for zone in &old.zones {
        if !new.zones.iter().any(|z| z.origin() == zone.origin()) {
            changes.push(format!("zone {} removed", zone.origin()));
        }
    }
    let names = |config: &crate::config::Config| -> Vec<String> {
        config.services.iter().map(|s| s.name.to_string()).collect()
    };
    let (before, after) = (names(&old.config), names(&new.config));
    for name in after.iter().filter(|n| !before.contains(n)) {
        changes.push(format!("GSLB name {name} added"));
    }
    for name in before.iter().filter(|n| !after.contains(n)) {
        changes.push(format!("GSLB name {name} removed"));
    }
    for pool in &new.config.pools {
        let members = |p: &crate::config::Pool| -> Vec<String> {
            p.members.iter().map(|m| m.name.clone()).collect()
        };
        match old.config.pools.iter().find(|p| p.name == pool.name) {
            None => changes.push(format!(
                "pool {} added ({} endpoints)",
                pool.name,
                pool.members.len()
            )),
            Some(before) => {
                let (was, is) = (members(before), members(pool));
                let added: Vec<_> = is.iter().filter(|m| !was.contains(m)).cloned().collect();
                let removed: Vec<_> = was.iter().filter(|m| !is.contains(m)).cloned().collect();
                if !added.is_empty() || !removed.is_empty() {
                    changes.push(format!(
                        "pool {}: endpoints added [{}], removed [{}]",
                        pool.name,
                        added.join(", "),
                        removed.join(", ")
                    ));
                } else if before != pool {
                    changes.push(format!("pool {}: settings changed", pool.name));
                }
            }
        }
    }
    for pool in &old.config.pools {
        if !new.config.pools.iter().any(|p| p.name == pool.name) {
            changes.push(format!("pool {} removed", pool.name));
        }
    }
    if old.config.services != new.config.services && changes.iter().all(|c| !c.starts_with("GSLB"))
    {
        changes.push("GSLB name settings changed".into());
    }
    if old.config.geo != new.config.geo {
        changes.push("geo settings changed".into());
    }
    if old.config.rrl != new.config.rrl {
        changes.push("rrl settings changed".into());
    }
    changes
}

fn single_error(message: String) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        file: "<reload>".into(),
        line: None,
        path: String::new(),
        message,
    }])
}
