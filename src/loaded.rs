//! A config and everything it names, loaded: the compiled [`Config`], its parsed zones and
//! the MaxMind database ([`Loaded`]), read from a [`ConfigSource`]. This is where the config
//! layer meets the zone and geo layers, so that neither of those depends on the config
//! loader, nor the config on them. Problems from all three come back together, located.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::LowerName;

use crate::config::compile;
use crate::config::{
    Config, ConfigError, ConfigErrors, EMBEDDED_CONFIG, EMBEDDED_ZONE, ZoneSource, find_key_line,
    parse_partial,
};
use crate::dnssec::keys::KeyRing;
use crate::zone::{Zone, ZoneError};

/// Where a config came from; a reload reads the same place again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// The default compiled into the binary ([`EMBEDDED_CONFIG`]).
    Embedded,
    /// The embedded default with other listen addresses (`gto --listen ... --admin ...`):
    /// its text, made by [`ConfigSource::embedded_with`].
    EmbeddedEdited(std::sync::Arc<str>),
    /// A TOML file on disk.
    File(PathBuf),
}

/// How long reading the config and its files may take before it is given up (a stuck
/// network file system, say): `gto check`, start-up and reloads report it as a problem.
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(30);

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigSource::Embedded | ConfigSource::EmbeddedEdited(_) => {
                f.write_str("<embedded default>")
            }
            ConfigSource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

impl ConfigSource {
    /// The embedded default, with `listen` as `[server] listen` and `admin` as `[admin]
    /// listen` when given (`gto --listen 0.0.0.0:5353 --admin 127.0.0.1:9053`). The
    /// addresses are checked when it loads, as a file's are.
    pub fn embedded_with(listen: &[String], admin: Option<&str>) -> Self {
        if listen.is_empty() && admin.is_none() {
            return ConfigSource::Embedded;
        }
        let mut table: toml::Table = toml::from_str(EMBEDDED_CONFIG).unwrap_or_default();
        if !listen.is_empty() {
            let server = table
                .entry("server")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let Some(server) = server.as_table_mut() {
                server.insert(
                    "listen".into(),
                    toml::Value::Array(listen.iter().cloned().map(toml::Value::String).collect()),
                );
            }
        }
        if let Some(admin) = admin {
            let section = table
                .entry("admin")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let Some(section) = section.as_table_mut() {
                section.insert("listen".into(), toml::Value::String(admin.to_string()));
            }
        }
        let text = toml::to_string(&table).unwrap_or_else(|_| EMBEDDED_CONFIG.to_string());
        ConfigSource::EmbeddedEdited(text.into())
    }

    /// Like [`ConfigSource::load`], but gives up after `timeout`. The reading thread is
    /// left behind when it is stuck in the kernel (or in a huge tree of files); nothing
    /// waits for it, and no other read starts until it has ended: a reload meanwhile is
    /// refused at once rather than adding a second reader.
    pub fn load_within(&self, timeout: Duration) -> Result<Loaded, ConfigErrors> {
        self.load_within_with(timeout, Vec::new())
    }

    /// [`ConfigSource::load_within`] with members added at run time merged into their
    /// pools ([`crate::runtime`]).
    pub fn load_within_with(
        &self,
        timeout: Duration,
        runtime: Vec<crate::runtime::RuntimeMember>,
    ) -> Result<Loaded, ConfigErrors> {
        use std::collections::HashSet;
        use std::sync::Mutex;
        /// The configs a reading thread is reading now (one thread per config at a time).
        static READING: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);
        /// Takes its config out of [`READING`] when the reading thread ends, however it
        /// ends.
        struct Reading(PathBuf);
        impl Drop for Reading {
            fn drop(&mut self) {
                if let Ok(mut reading) = READING.lock()
                    && let Some(set) = reading.as_mut()
                {
                    set.remove(&self.0);
                }
            }
        }
        let file = match self {
            ConfigSource::Embedded | ConfigSource::EmbeddedEdited(_) => {
                PathBuf::from("<embedded gto.toml>")
            }
            ConfigSource::File(path) => path.clone(),
        };
        let started = READING
            .lock()
            .map(|mut reading| {
                reading
                    .get_or_insert_with(HashSet::new)
                    .insert(file.clone())
            })
            .unwrap_or(true);
        if !started {
            return Err(ConfigErrors(vec![ConfigError {
                file,
                line: None,
                path: String::new(),
                message: "the previous read of the config and its files is still running \
                          (it gave up waiting, the reading goes on); not starting another"
                    .into(),
            }]));
        }
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        let source = self.clone();
        let reading = Reading(file.clone());
        let spawned = std::thread::Builder::new()
            .name("gto-load".into())
            .spawn(move || {
                let loaded = source.load_with(&runtime);
                // Free before answering: a reload that follows at once must not find it
                // still taken.
                drop(reading);
                let _ = sender.send(loaded);
            });
        let failed = |message: String| {
            ConfigErrors(vec![ConfigError {
                file: file.clone(),
                line: None,
                path: String::new(),
                message,
            }])
        };
        if let Err(e) = spawned {
            // The closure, and with it the guard, was dropped: the config is free again.
            return Err(failed(format!("cannot start reading the config: {e}")));
        }
        match receiver.recv_timeout(timeout) {
            Ok(result) => result,
            Err(_) => Err(failed(format!(
                "reading the config and the files it names took longer than {}s (a stuck \
                 file system?); gave up",
                timeout.as_secs()
            ))),
        }
    }

    /// Reads, validates and loads the config and all of its zone files.
    pub fn load(&self) -> Result<Loaded, ConfigErrors> {
        self.load_with(&[])
    }

    /// [`ConfigSource::load`] with members added at run time merged into their pools: the
    /// ones applied are in [`Loaded::runtime`]; why others were not is a warning.
    pub fn load_with(
        &self,
        runtime: &[crate::runtime::RuntimeMember],
    ) -> Result<Loaded, ConfigErrors> {
        let (text, file, embedded) = self.text()?;
        if runtime.is_empty() {
            return load_str(&text, &file, embedded);
        }
        let (merged, applied, dropped) =
            crate::runtime::merge(&text, runtime).map_err(|message| {
                ConfigErrors(vec![ConfigError {
                    file: file.clone(),
                    line: None,
                    path: String::new(),
                    message,
                }])
            })?;
        let mut loaded = load_str(&merged, &file, embedded)?;
        loaded.runtime = applied;
        loaded
            .warnings
            .extend(dropped.into_iter().map(|message| ConfigError {
                file: file.clone(),
                line: None,
                path: "runtime".into(),
                message,
            }));
        Ok(loaded)
    }

    /// The `[server]` settings alone, from the config parsed without reading its zones,
    /// keys or databases: what the listeners need to bind before the rest loads. `None`
    /// when the config does not parse (the full load reports why).
    pub fn server_settings(&self) -> Option<crate::config::ServerSettings> {
        let (text, file, _) = self.text().ok()?;
        crate::config::parse(&text, &file)
            .ok()
            .map(|config| config.server)
    }

    /// The config's text, the name it goes by in messages, and whether it is the
    /// embedded one.
    fn text(&self) -> Result<(String, PathBuf, bool), ConfigErrors> {
        Ok(match self {
            ConfigSource::Embedded => (
                EMBEDDED_CONFIG.to_string(),
                PathBuf::from("<embedded gto.toml>"),
                true,
            ),
            ConfigSource::EmbeddedEdited(text) => {
                (text.to_string(), PathBuf::from("<embedded gto.toml>"), true)
            }
            ConfigSource::File(path) => {
                let text = crate::files::read_to_string(path, crate::files::MAX_CONFIG_SIZE)
                    .map_err(|e| {
                        ConfigErrors(vec![ConfigError {
                            file: path.clone(),
                            line: None,
                            path: String::new(),
                            message: format!("cannot read config: {e}"),
                        }])
                    })?;
                (text, path.clone(), false)
            }
        })
    }
}

/// A validated config together with its parsed zones: everything the routing builder needs.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The compiled config.
    pub config: Config,
    /// One parsed zone per `[[zone]]`, in config order.
    pub zones: Vec<Zone>,
    /// The opened `[geo] mmdb` database, if configured.
    pub geo_db: Option<std::sync::Arc<crate::geo::mmdb::Mmdb>>,
    /// What the config and zones mean for answers, digested ([`Loaded::digest`]).
    meaning: Meaning,
    /// Problems that leave the config servable (occluded zone data), located: `gto check`
    /// prints them and `gto run` logs them.
    pub warnings: Vec<ConfigError>,
    /// Members added at run time that this config holds ([`crate::runtime`]).
    pub runtime: Vec<crate::runtime::RuntimeMember>,
    /// The DNSSEC keys of each zone (same order as `zones`), for zones with `dnssec`.
    pub keys: Vec<Option<std::sync::Arc<crate::dnssec::keys::KeyRing>>>,
    /// Each key directory's fingerprint ([`crate::files::changed_at`]) as of its last read, whether
    /// that read worked or not (a different fingerprint means keys to read again).
    pub keys_changed: Vec<Option<u64>>,
}

/// The digest of a config's meaning ([`meaning_digest`]), made in a thread of its own: a
/// big zone's digest (every record, in canonical order) takes a tenth of a second that
/// start-up and reloads need not wait for. Read it with [`Loaded::digest`], which waits
/// for it.
#[derive(Debug, Clone)]
struct Meaning(Arc<std::sync::OnceLock<(String, std::collections::BTreeMap<String, String>)>>);

impl Meaning {
    fn of(config: &Config, zones: &[Zone]) -> Self {
        let cell = Arc::new(std::sync::OnceLock::new());
        let (config, zones, into) = (config.clone(), zones.to_vec(), cell.clone());
        let digest = move || {
            // Readers wait for the digest: a panic here (a bug) must still give them one.
            let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                meaning_digest(&config, &zones)
            }));
            let _ = into.set(made.unwrap_or_else(|_| {
                tracing::error!("the config digest failed (a bug); it shows as \"unknown\"");
                ("unknown".into(), Default::default())
            }));
        };
        if let Err(error) = std::thread::Builder::new()
            .name("gto-digest".into())
            .spawn(digest.clone())
        {
            tracing::debug!(%error, "no thread for the config digest; made here");
            digest();
        }
        Self(cell)
    }

    fn get(&self) -> &(String, std::collections::BTreeMap<String, String>) {
        self.0.wait()
    }
}

impl Loaded {
    /// SHA-256 (first 8 bytes, hex) of what the config and zones mean for answers: see
    /// [`meaning_digest`]. Instances that answer alike show the same digest whatever their
    /// per-host settings, comments or record order.
    pub fn digest(&self) -> &str {
        &self.meaning.get().0
    }

    /// The digest per section (`zone <origin>`, `service <name>`, `pool <name>`, `geo`,
    /// `rrl`, `server`), so that drift can say where two configs differ.
    pub fn digest_sections(&self) -> &std::collections::BTreeMap<String, String> {
        &self.meaning.get().1
    }

    /// Reads every signed zone's key directory again (keys a rollover or an operator
    /// added) and says whether any zone's keys changed. A directory that cannot be read
    /// keeps the keys read before, with a warning; the failed read is remembered (its
    /// change time), so the same bad file is neither warned about nor re-read until the
    /// directory changes again, and nothing is re-signed for it.
    pub fn reread_keys(&mut self) -> bool {
        let mut changed_any = false;
        for (index, spec) in self.config.zones.iter().enumerate() {
            let Some(dnssec) = &spec.dnssec else {
                continue;
            };
            // Before reading: a change while reading is seen by the next check.
            let changed = crate::files::changed_at(&dnssec.keys);
            if let Some(slot) = self.keys_changed.get_mut(index) {
                *slot = changed;
            }
            match crate::dnssec::keys::read_dir(&dnssec.keys, &spec.origin) {
                Ok(ring) => {
                    if let Some(slot) = self.keys.get_mut(index) {
                        let same = slot.as_ref().is_some_and(|old| old.same_keys(&ring));
                        if !same {
                            *slot = Some(std::sync::Arc::new(ring));
                            changed_any = true;
                        }
                    }
                }
                Err(error) => {
                    metrics::counter!(crate::metrics::DNSSEC_KEY_READ_FAILURES_TOTAL, "zone" => spec.origin.to_string())
                        .increment(1);
                    tracing::warn!(zone = %spec.origin, %error, "could not read the zone's keys; keeping the keys read before until the key directory changes again");
                }
            }
        }
        changed_any
    }
}

/// A warning per zone whose name servers' in-zone addresses (the glue a parent delegates
/// with) are all missing from `[server] listen`: resolvers following the delegation ask
/// those addresses, not this instance (fine behind NAT or a load balancer, which is why
/// it is a warning). Silent with a wildcard listener or without in-zone addresses.
fn name_server_warnings(config: &Config, zones: &[Zone], file: &Path) -> Vec<ConfigError> {
    use hickory_proto::rr::{LowerName, RData, RecordType};
    let listen = &config.server.listen;
    if listen.iter().any(|a| a.ip().is_unspecified()) {
        return Vec::new();
    }
    let mut warnings = Vec::new();
    for zone in zones {
        let sets = zone.names();
        let of_type = |name: &LowerName, kind: RecordType| {
            sets.get(name)
                .into_iter()
                .flat_map(|s| s.iter())
                .filter(move |s| s.record_type == kind)
                .flat_map(|s| s.rdata())
        };
        let mut servers = Vec::new();
        for ns in of_type(zone.origin(), RecordType::NS) {
            let RData::NS(target) = ns.as_ref() else {
                continue;
            };
            let target = LowerName::from(&target.0);
            for data in of_type(&target, RecordType::A).chain(of_type(&target, RecordType::AAAA)) {
                let ip = match data.as_ref() {
                    RData::A(a) => std::net::IpAddr::V4(a.0),
                    RData::AAAA(a) => std::net::IpAddr::V6(a.0),
                    _ => continue,
                };
                servers.push((target.to_string(), ip));
            }
        }
        if servers.is_empty()
            || servers
                .iter()
                .any(|(_, ip)| listen.iter().any(|l| l.ip() == *ip))
        {
            continue;
        }
        let named: Vec<String> = servers.iter().map(|(n, ip)| format!("{n} {ip}")).collect();
        let listening: Vec<String> = listen.iter().map(ToString::to_string).collect();
        warnings.push(ConfigError {
            file: file.to_path_buf(),
            line: None,
            path: "server.listen".into(),
            message: format!(
                "zone {}: its name servers' addresses ({}) are not among the listen addresses \
                 ({}): resolvers following the delegation ask those addresses; list them in \
                 server.listen, unless this instance sits behind NAT or a load balancer",
                zone.origin(),
                named.join(", "),
                listening.join(", ")
            ),
        });
    }
    warnings
}

/// The state file's directory, when it does not exist: the file is made at the first
/// write, its directory is not, so no change would ever be saved. A warning for `gto
/// check` (the packaged unit's `StateDirectory=gto` makes /var/lib/gto when it starts);
/// `gto run` refuses to start. A directory that cannot be looked into (/var/lib/gto of
/// the packaged unit, read by another user) is not judged.
pub fn missing_state_dir(config: &Config) -> Option<String> {
    let path = config.server.state_file.as_ref()?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty())?;
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(format!(
            "its directory {} does not exist: create it (the packaged unit's \
             StateDirectory=gto makes /var/lib/gto at start)",
            dir.display()
        )),
        Ok(metadata) if !metadata.is_dir() => Some(format!("{} is not a directory", dir.display())),
        _ => None,
    }
}

/// Parses config text, loads every zone and checks the names across both. Problems from
/// all three steps are reported together.
fn load_str(text: &str, file: &Path, embedded: bool) -> Result<Loaded, ConfigErrors> {
    let (config, mut errors) = parse_partial(text, file);
    let Some(mut config) = config else {
        return Err(ConfigErrors(errors));
    };
    if embedded {
        for zone in &mut config.zones {
            zone.source = ZoneSource::Embedded(EMBEDDED_ZONE);
        }
    }
    let mut zones = Vec::new();
    let mut failed = Vec::new();
    for spec in &config.zones {
        let zone = match &spec.source {
            ZoneSource::Embedded(text) => {
                crate::zone::parse(text, &spec.origin, spec.source.display_path())
            }
            ZoneSource::File(path) => crate::zone::load(
                &spec.origin,
                path,
                &crate::zone::ReadLimits {
                    bytes: config.server.max_file_size,
                    includes: crate::zone::MAX_INCLUDES,
                    root: config.server.include_root.clone(),
                },
            ),
        };
        match zone.map_err(|errors| errors.into_iter().map(located).collect::<Vec<_>>()) {
            Ok(zone) => zones.push(zone),
            Err(mut zone_errors) => {
                errors.append(&mut zone_errors);
                failed.push(LowerName::from(&spec.origin));
            }
        }
    }
    // Names are checked against the zones that loaded; names in a zone that did not are
    // left alone (its own errors say why).
    check_names(text, file, &config, &zones, &failed, &mut errors);
    let geo_db = match &config.geo.mmdb {
        None => None,
        Some(path) => match crate::geo::mmdb::Mmdb::open(path, config.server.max_file_size) {
            Ok(db) => Some(std::sync::Arc::new(db)),
            Err(error) => {
                errors.push(ConfigError {
                    file: file.to_path_buf(),
                    line: find_key_line(text, "geo.mmdb")
                        .map(|offset| compile::line_of(text, offset)),
                    path: "geo.mmdb".into(),
                    message: error.to_string(),
                });
                None
            }
        },
    };
    let (keys, keys_changed) = read_keys(&config, file, &mut errors);
    if errors.is_empty() {
        let meaning = Meaning::of(&config, &zones);
        let warnings = zones
            .iter()
            .flat_map(|zone| zone.warnings().iter().cloned().map(located))
            // The embedded default is a demonstration on loopback: not a delegation.
            .chain(if embedded {
                Vec::new()
            } else {
                name_server_warnings(&config, &zones, file)
            })
            .chain(missing_state_dir(&config).map(|message| {
                ConfigError {
                    file: file.to_path_buf(),
                    line: find_key_line(text, "server.state_file")
                        .map(|offset| compile::line_of(text, offset)),
                    path: "server.state_file".into(),
                    message: format!("{message} (`gto run` refuses to start without it)"),
                }
            }))
            .collect();
        Ok(Loaded {
            keys,
            runtime: Vec::new(),
            keys_changed,
            config,
            zones,
            geo_db,
            meaning,
            warnings,
        })
    } else {
        // The config file first, in line order, then each zone file in line order.
        errors.sort_by(|a, b| {
            (a.file != file, &a.file, a.line).cmp(&(b.file != file, &b.file, b.line))
        });
        // A pool's check is compiled once per member: report each problem once.
        let mut seen = std::collections::HashSet::new();
        errors.retain(|e| seen.insert(e.clone()));
        Err(ConfigErrors(errors))
    }
}

/// Reads every signed zone's keys: here, once per load, and never by compile or the
/// builder. A key directory that is missing, holds a file that cannot be used, or has no
/// key signing the zone now is a problem located at the zone's `dnssec.keys`. Returns the
/// key rings (same order as the zones) and each directory's fingerprint, taken before
/// reading (a change while reading is seen by the next check).
fn read_keys(
    config: &Config,
    file: &Path,
    errors: &mut Vec<ConfigError>,
) -> (Vec<Option<Arc<KeyRing>>>, Vec<Option<u64>>) {
    let mut rings = Vec::with_capacity(config.zones.len());
    let mut fingerprints = Vec::with_capacity(config.zones.len());
    for spec in &config.zones {
        let Some(dnssec) = &spec.dnssec else {
            rings.push(None);
            fingerprints.push(None);
            continue;
        };
        let dir = &dnssec.keys;
        let at = &dnssec.keys_at;
        let make = format!(
            "make one with `gto dnssec keygen --zone {} --dir {}`",
            spec.origin, at.written
        );
        let mut problem = |message: String| {
            errors.push(ConfigError {
                file: file.to_path_buf(),
                line: at.line,
                path: at.path.clone(),
                message,
            });
        };
        fingerprints.push(crate::files::changed_at(dir));
        let ring = if dir.is_dir() {
            match crate::dnssec::keys::read_dir(dir, &spec.origin) {
                Ok(ring) if ring.zone_signers(crate::dnssec::now()).is_empty() => {
                    problem(format!(
                        "no key in {} signs {} now ({} key(s) for the zone); {make}",
                        dir.display(),
                        spec.origin,
                        ring.keys.len()
                    ));
                    None
                }
                Ok(ring) => Some(Arc::new(ring)),
                Err(error) => {
                    problem(error.to_string());
                    None
                }
            }
        } else {
            problem(format!("{} is not a directory; {make}", dir.display()));
            None
        };
        rings.push(ring);
    }
    (rings, fingerprints)
}

/// The digest of what a config and its zones mean for the answers of a fleet, by section,
/// and over all sections: every zone's records (owner, type, TTL, data; in canonical order,
/// so record order and comments do not count) and DNSSEC settings, every GSLB name's
/// pool, policy, tie, answers, TTL, all-down rule, affinity and ECS use, every pool's members
/// and checks and load and vote rules, the geo tables, `[latency]`, rate limiting and the UDP payload
/// size. Per-host settings never count: listen addresses, workers and TCP limits,
/// identity, state file, `[admin]`, `[cluster]` (instance, region, endpoints), `[health]`
/// sources, webhooks, file paths.
pub fn meaning_digest(
    config: &Config,
    zones: &[Zone],
) -> (String, std::collections::BTreeMap<String, String>) {
    use sha2::{Digest, Sha256};
    let short = short_digest;
    let text = |parts: &str| {
        let mut hasher = Sha256::new();
        hasher.update(parts.as_bytes());
        short(hasher)
    };
    let mut sections = std::collections::BTreeMap::new();
    for (spec, zone) in config.zones.iter().zip(zones) {
        sections.insert(format!("zone {}", spec.origin), zone_digest(spec, zone));
    }
    let pool_name = |id: crate::config::PoolId| {
        config
            .pools
            .get(id.0)
            .map_or_else(String::new, |p| p.name.clone())
    };
    for service in &config.services {
        let crate::config::Service {
            name,
            pool,
            policy,
            tie,
            answers,
            ttl,
            when_all_down,
            affinity,
            use_ecs,
            overrides,
            span: _,
            position: _,
        } = service;
        // The overrides by what they mean: networks and pool or member names.
        let overrides: Vec<String> = overrides
            .iter()
            .map(|o| {
                let target = match &o.target {
                    crate::config::OverrideTarget::Pool(id) => format!("pool {}", pool_name(*id)),
                    crate::config::OverrideTarget::Members(names) => {
                        format!("members {}", names.join(","))
                    }
                };
                format!("{:?} {target}", o.networks)
            })
            .collect();
        let when_all_down = match when_all_down {
            crate::config::WhenAllDown::Fallback(id) => format!("fallback {}", pool_name(*id)),
            other => format!("{other:?}"),
        };
        // The tie is written only when set, so digests of configs without it stay as
        // they were (a fleet upgraded one instance at a time compares them).
        let tie = match tie {
            crate::config::Tie::ConfigOrder => String::new(),
            other => format!(" tie {}", other.as_str()),
        };
        sections.insert(
            format!("service {name}"),
            text(&format!(
                "{} {policy:?} {answers:?} {ttl:?} {when_all_down} {affinity:?} {use_ecs}{}{tie}",
                pool_name(*pool),
                if overrides.is_empty() {
                    String::new()
                } else {
                    format!(" overrides {overrides:?}")
                }
            )),
        );
    }
    for pool in &config.pools {
        sections.insert(format!("pool {}", pool.name), text(&format!("{pool:?}")));
    }
    let geo = &config.geo;
    sections.insert(
        "geo".into(),
        text(&format!(
            "{:?} {:?} {:?} mmdb={}",
            geo.networks,
            geo.regions,
            geo.default,
            geo.mmdb.is_some()
        )),
    );
    sections.insert("rrl".into(), text(&format!("{:?}", config.rrl)));
    if config.latency != crate::config::LatencySettings::default() {
        sections.insert("latency".into(), text(&format!("{:?}", config.latency)));
    }
    sections.insert(
        "server".into(),
        text(&format!("udp_payload={}", config.server.udp_payload)),
    );
    let mut all = Sha256::new();
    for (section, digest) in &sections {
        all.update(section.as_bytes());
        all.update(digest.as_bytes());
    }
    (short(all), sections)
}

/// The first 8 bytes of a SHA-256, in hex: what digests show.
fn short_digest(hasher: sha2::Sha256) -> String {
    use sha2::Digest;
    hasher
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One zone's part of [`meaning_digest`]: its DNSSEC settings and every record (owner,
/// type, TTL, data) in canonical order.
fn zone_digest(spec: &crate::config::ZoneSpec, zone: &Zone) -> String {
    use hickory_proto::serialize::binary::BinEncodable;
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let dnssec = spec
        .dnssec
        .as_ref()
        .map(|d| (d.dnskey_ttl, d.lifetime, d.parent_ds_ttl, d.propagation));
    hasher.update(format!("{dnssec:?}").as_bytes());
    let mut owners: Vec<_> = zone.rrsets().collect();
    // Canonical order by prepared keys: label-by-label comparisons of 200,000 names
    // cost a third of a second.
    owners.sort_by_cached_key(|(owner, _)| crate::zone::canonical_key(owner));
    let record = |record_type: hickory_proto::rr::RecordType,
                  ttl: u32,
                  data: &hickory_proto::rr::RData|
     -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&u16::from(record_type).to_be_bytes());
        bytes.extend_from_slice(&ttl.to_be_bytes());
        bytes.extend(data.to_bytes().unwrap_or_default());
        bytes
    };
    let soa = zone.soa();
    hasher.update(record(soa.record_type(), soa.ttl, &soa.data));
    for (owner, sets) in owners {
        hasher.update(owner.to_string().as_bytes());
        let mut records: Vec<Vec<u8>> = sets
            .iter()
            .flat_map(|set| {
                set.rdata()
                    .map(|data| record(set.record_type, set.ttl(), &data))
            })
            .collect();
        records.sort();
        for bytes in records {
            hasher.update((bytes.len() as u32).to_be_bytes());
            hasher.update(bytes);
        }
    }
    short_digest(hasher)
}

/// Every GSLB name must sit inside a configured zone, below its apex and above its
/// delegations, and must not also be a static name or a wildcard.
fn check_names(
    text: &str,
    file: &Path,
    config: &Config,
    zones: &[Zone],
    failed: &[LowerName],
    errors: &mut Vec<ConfigError>,
) {
    for service in &config.services {
        if failed
            .iter()
            .any(|origin| origin.zone_of(&LowerName::from(&service.name)))
        {
            continue;
        }
        let i = service.position;
        let name = LowerName::from(&service.name);
        let located = |message: String| ConfigError {
            file: file.to_path_buf(),
            line: Some(compile::line_of(text, service.span)),
            path: format!("service[{i}].name"),
            message,
        };
        match zones
            .iter()
            .filter(|z| z.origin().zone_of(&name))
            .max_by_key(|z| z.origin().num_labels())
        {
            None => errors.push(located(format!(
                "GSLB name {} is outside every configured zone",
                service.name
            ))),
            Some(zone) if zone.cut_of(&name).is_some() => errors.push(located(format!(
                "GSLB name {} is at or below the delegation {} in zone file {}: that part of \
                 the name space is answered by the child zone's servers",
                service.name,
                zone.cut_of(&name)
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                zone.file().display()
            ))),
            Some(zone) if zone.has_name(&name) => errors.push(located(format!(
                "GSLB name {} is also a static name in zone file {}",
                service.name,
                zone.file().display()
            ))),
            Some(zone) if *zone.origin() == name => errors.push(located(format!(
                "GSLB name {} must be below the apex of zone {}",
                service.name,
                zone.origin()
            ))),
            Some(_) if name.is_wildcard() => errors.push(located(format!(
                "GSLB name {} cannot be a wildcard",
                service.name
            ))),
            Some(_) => {}
        }
    }
}

/// A zone file's problem as a config problem (no config path: the file and line say it).
fn located(error: ZoneError) -> ConfigError {
    ConfigError {
        file: error.file,
        line: error.line,
        path: String::new(),
        message: error.message,
    }
}
