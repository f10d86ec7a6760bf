//! The `gto` binary: parse the command line, set up logging, load the config (exit 64 if
//! it is bad), then serve until a signal says stop.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use gto::cli::{Cli, Command};
use gto::loaded::LOAD_TIMEOUT;
use gto::shutdown::{Signal, Signals};
use gto::{App, ConfigSource, EXIT_BAD_CONFIG};
use tracing_subscriber::EnvFilter;

/// mimalloc, not the system allocator: glibc keeps what a reload frees in per-thread arenas
/// (each reload reads in a new thread), so a 200k-record zone grew RSS by a zone's worth
/// per reload; mimalloc reuses and returns it (issue 30 item 2, figures in the README).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    match cli.command {
        None => serve(ConfigSource::Embedded),
        Some(Command::Run { config }) => {
            serve(config.map_or(ConfigSource::Embedded, ConfigSource::File))
        }
        Some(Command::Check { config }) => check(ConfigSource::File(config)),
        Some(Command::Probe { config }) => probe(ConfigSource::File(config)),
        Some(Command::Dnssec(command)) => dnssec(command),
        Some(Command::Assets { dir }) => match gto::cli::write_assets(&dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => fail(&error),
        },
        Some(Command::Explain {
            config,
            qtype,
            name,
            client,
        }) => match gto::app::explain_offline(
            &ConfigSource::File(config),
            &name,
            Some(&qtype),
            &client,
        ) {
            Ok(explanation) => {
                let text = serde_json::to_string_pretty(&explanation).unwrap_or_default();
                let _ = writeln!(std::io::stdout(), "{text}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                let _ = writeln!(std::io::stderr(), "error: {error}");
                ExitCode::from(EXIT_BAD_CONFIG)
            }
        },
    }
}

fn check(source: ConfigSource) -> ExitCode {
    match source.load_within(LOAD_TIMEOUT) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                let _ = writeln!(std::io::stderr(), "warning: {warning}");
            }
            let config = &loaded.config;
            let endpoints: usize = config.pools.iter().map(|p| p.members.len()).sum();
            let _ = writeln!(
                std::io::stdout(),
                "ok: {} zone(s), {} GSLB name(s), {} pool(s), {} endpoint(s)",
                config.zones.len(),
                config.services.len(),
                config.pools.len(),
                endpoints
            );
            ExitCode::SUCCESS
        }
        Err(errors) => report(&errors),
    }
}

/// `gto dnssec ...`: prints what the command returns; bad arguments or config exit 64.
fn dnssec(command: gto::cli::DnssecCommand) -> ExitCode {
    use gto::cli::DnssecCommand;
    use gto::dnssec::commands;
    use gto::dnssec::keys::{KeyAlgorithm, Role};
    let usage = |message: String| {
        let _ = writeln!(std::io::stderr(), "error: {message}");
        ExitCode::from(EXIT_BAD_CONFIG)
    };
    let role_of = |text: &str| match text.to_ascii_lowercase().as_str() {
        "csk" => Ok(Role::Csk),
        "ksk" => Ok(Role::Ksk),
        "zsk" => Ok(Role::Zsk),
        other => Err(format!("--role {other:?}: one of csk, ksk, zsk")),
    };
    let load = |config: std::path::PathBuf| ConfigSource::File(config).load_within(LOAD_TIMEOUT);
    let result: Result<String, ExitCode> = match command {
        DnssecCommand::Keygen {
            zone,
            dir,
            algorithm,
            role,
            dnskey_ttl,
        } => {
            let zone = match hickory_proto::rr::Name::from_ascii(&zone) {
                Ok(mut zone) if !zone.is_empty() => {
                    zone.set_fqdn(true);
                    zone
                }
                _ => return usage(format!("--zone {zone:?} is not a domain name")),
            };
            let Some(algorithm) = KeyAlgorithm::parse(&algorithm) else {
                return usage(format!(
                    "--algorithm {algorithm:?}: one of ecdsap256sha256, ed25519"
                ));
            };
            let role = match role_of(&role) {
                Ok(role) => role,
                Err(message) => return usage(message),
            };
            commands::keygen(&dir, &zone, role, algorithm, dnskey_ttl).map_err(|e| fail(&e))
        }
        DnssecCommand::Ds { config } => load(config)
            .map(|loaded| commands::ds(&loaded))
            .map_err(|errors| report(&errors)),
        DnssecCommand::Status { config } => load(config)
            .map(|loaded| commands::status(&loaded))
            .map_err(|errors| report(&errors)),
        DnssecCommand::Rollover { config, zone, role } => {
            let role = match role_of(&role) {
                Ok(role) => role,
                Err(message) => return usage(message),
            };
            match load(config) {
                Err(errors) => Err(report(&errors)),
                Ok(loaded) => {
                    let wanted = hickory_proto::rr::Name::from_ascii(&zone)
                        .map(|z| z.to_lowercase())
                        .ok();
                    let index = loaded.config.zones.iter().position(|z| {
                        wanted.as_ref().is_some_and(|w| {
                            z.origin.to_lowercase().to_string().trim_end_matches('.')
                                == w.to_string().trim_end_matches('.')
                        })
                    });
                    match index {
                        None => return usage(format!("zone {zone} is not in the config")),
                        Some(index) => commands::rollover(&loaded, index, role).map_err(usage),
                    }
                }
            }
        }
    };
    match result {
        Ok(text) => {
            let _ = write!(std::io::stdout(), "{text}");
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn report(errors: &gto::config::ConfigErrors) -> ExitCode {
    let mut stderr = std::io::stderr();
    for error in errors.iter() {
        let _ = writeln!(stderr, "error: {error}");
    }
    let _ = writeln!(stderr, "{} problem(s) found", errors.len());
    ExitCode::from(EXIT_BAD_CONFIG)
}

fn serve(source: ConfigSource) -> ExitCode {
    with_runtime(|| async move {
        let (loaded, signals, reload_queued) = match load_with_signals(&source).await {
            Ok(started) => started,
            Err(code) => return code,
        };
        match App::start(source, loaded).await {
            Ok(app) => match app.run_until_signal(signals, reload_queued).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => fail(&error),
            },
            Err(error) => fail(&error),
        }
    })
}

/// `gto probe`: health checks and votes only.
fn probe(source: ConfigSource) -> ExitCode {
    with_runtime(|| async move {
        let (loaded, signals, _) = match load_with_signals(&source).await {
            Ok(started) => started,
            Err(code) => return code,
        };
        match gto::agent::run(loaded, signals).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                let _ = writeln!(std::io::stderr(), "error: {error}");
                ExitCode::from(EXIT_BAD_CONFIG)
            }
        }
    })
}

/// Raises the open-file limit, then runs `main` on a multi-threaded runtime.
fn with_runtime<F, Fut>(main: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ExitCode>,
{
    // Before any thread or socket: idle clients must not exhaust a low soft limit.
    gto::rlimit::raise_nofile();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(main()),
        Err(error) => fail(&error),
    }
}

/// The signals, installed first (a SIGHUP or SIGTERM while the zones load must not kill
/// gto), then the config loaded off the runtime's threads. Returns the config, the
/// signals and whether a SIGHUP arrived meanwhile; or the exit code (SIGTERM while
/// loading: 0; a bad config: 64).
async fn load_with_signals(
    source: &ConfigSource,
) -> Result<(gto::Loaded, Signals, bool), ExitCode> {
    let mut signals = Signals::new().map_err(|error| fail(&error))?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %source,
        "gto starting; loading the config"
    );
    let mut reload_queued = false;
    let loading = {
        let source = source.clone();
        tokio::task::spawn_blocking(move || source.load_within(LOAD_TIMEOUT))
    };
    tokio::pin!(loading);
    let loaded = loop {
        tokio::select! {
            loaded = &mut loading => break loaded,
            signal = signals.next() => match signal {
                Signal::Reload => reload_queued = true,
                Signal::Stop => return Err(ExitCode::SUCCESS),
            },
        }
    };
    match loaded {
        Ok(Ok(loaded)) => Ok((loaded, signals, reload_queued)),
        Ok(Err(errors)) => Err(report(&errors)),
        Err(error) => Err(fail(&error)),
    }
}

fn fail(error: &dyn std::fmt::Display) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "Error: {error}");
    ExitCode::FAILURE
}

fn init_logging(json: bool) {
    // hickory-server logs every request at info; keep it to warnings unless asked.
    let filter = EnvFilter::try_from_env("GTO_LOG").unwrap_or_else(|_| {
        EnvFilter::new("info,hickory_server=warn,hickory_proto=warn,hickory_net=warn")
    });
    // Colour only for a person at a terminal; never into the journal or a log file.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
