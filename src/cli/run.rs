//! What `gto run`, `gto probe`, `gto check` and `gto explain` do once the command line is
//! parsed: logging, the runtime, and loading the config with the signals already
//! installed; a config that does not load exits 64 (`super::exit`).

use std::io::Write;
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

use super::exit::{fail, report};
use super::{Cli, Command};
use crate::loaded::LOAD_TIMEOUT;
use crate::shutdown::{Signal, Signals};
use crate::{App, ConfigSource, EXIT_BAD_CONFIG, Loaded};

/// Runs a parsed command line to its exit code.
pub fn main(cli: Cli) -> ExitCode {
    // Before anything opens a descriptor of its own.
    crate::handover::close_inherited();
    // Before an upgrade can replace the binary at this path.
    crate::handover::remember_invocation();
    init_logging(cli.log_json);
    match cli.command {
        None => serve(embedded(&cli.embedded)),
        Some(Command::Run {
            config,
            embedded: listen,
        }) => serve(config.map_or_else(|| embedded(&listen), ConfigSource::File)),
        Some(Command::Config {
            command: super::ConfigCommand::Example,
        }) => {
            let _ = std::io::stdout().write_all(crate::config::EMBEDDED_CONFIG.as_bytes());
            ExitCode::SUCCESS
        }
        Some(Command::Check { config }) => check(ConfigSource::File(config)),
        Some(Command::Reload { config, pid }) => super::reload::reload(&config, pid),
        Some(Command::Replace { config, pid }) => super::replace::replace(&config, pid),
        Some(Command::Probe { config }) => probe(ConfigSource::File(config)),
        Some(Command::Ctl(ctl)) => super::ctl::ctl(ctl),
        Some(Command::Dnssec(command)) => super::dnssec::run(command),
        Some(Command::Assets { dir }) => match super::write_assets(&dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => fail(&error),
        },
        Some(Command::Explain {
            config,
            qtype,
            name,
            client,
        }) => explain(ConfigSource::File(config), &name, &qtype, &client),
    }
}

/// `gto explain`: the decision for one query, as JSON.
fn explain(source: ConfigSource, name: &str, qtype: &str, client: &str) -> ExitCode {
    match crate::app::explain_offline(&source, name, Some(qtype), client) {
        Ok(explanation) => {
            let text = serde_json::to_string_pretty(&explanation).unwrap_or_default();
            let _ = writeln!(std::io::stdout(), "{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            let _ = writeln!(std::io::stderr(), "error: {error}");
            ExitCode::from(EXIT_BAD_CONFIG)
        }
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

fn serve(source: ConfigSource) -> ExitCode {
    let mut inherited = match crate::handover::Inherited::from_env() {
        Ok(inherited) => inherited,
        Err(error) => return fail(&error),
    };
    // The listeners first: queries sent while the rest starts wait in the sockets.
    let ahead =
        crate::dns::server::bind_ahead(&source, &mut inherited, crate::dns::server::AHEAD_HOLD);
    // Then the metrics recorder, whose clock's calibration (it spins a CPU) runs beside
    // the zones' loading rather than beside the binding; nothing waits for it.
    crate::metrics::install();
    with_runtime(|| async move {
        let (loaded, signals, reload_queued) = match load_with_signals(&source).await {
            Ok(started) => started,
            Err(code) => return code,
        };
        // Changes that could never be saved: refused before anything serves.
        if let Some(problem) = crate::loaded::missing_state_dir(&loaded.config) {
            let _ = writeln!(std::io::stderr(), "error: server.state_file: {problem}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
        // The file changed between the two reads: bound again as it now says.
        if let Some(ahead) = &ahead
            && !crate::dns::server::binds_alike(ahead, &loaded.config.server)
        {
            inherited.forget_dns();
        }
        // The first snapshot is prepared on this thread (a big signed zone's first signing
        // takes seconds): the signals are watched meanwhile on the runtime's workers, so
        // that SIGTERM stops gto then too, at once, rather than once it serves.
        let (started, starting) = tokio::sync::oneshot::channel::<()>();
        let watching = tokio::spawn(watch_while_starting(signals, reload_queued, starting));
        let app = App::start_with(source, loaded, inherited).await;
        let _ = started.send(());
        let Ok((signals, reload_queued)) = watching.await else {
            return fail(&"the signal watch of the start ended");
        };
        let code = match app {
            Ok(app) => match app.run_until_signal(signals, reload_queued).await {
                Ok(()) => None,
                Err(error) => Some(fail(&error)),
            },
            Err(error) => Some(fail(&error)),
        };
        // A write begun after the shutdown's (none, unless a reload was under way).
        crate::dnssec::kept::finish_writes();
        match code {
            Some(code) => code,
            None => super::exit::stopped(),
        }
    })
}

/// Watches the signals until `started` fires (the start is done, served or failed), then
/// hands them back with whether a SIGHUP came meanwhile. SIGTERM or SIGINT before that
/// ends gto at once with exit 0 (the state file is written only once gto serves; kept
/// signatures being written are finished first).
async fn watch_while_starting(
    mut signals: Signals,
    mut reload_queued: bool,
    mut started: tokio::sync::oneshot::Receiver<()>,
) -> (Signals, bool) {
    loop {
        tokio::select! {
            _ = &mut started => return (signals, reload_queued),
            signal = signals.next() => match signal {
                Signal::Reload => reload_queued = true,
                Signal::Stop => {
                    tracing::info!("stopped while starting, before serving");
                    // A kept-signatures file being written is finished, not cut.
                    let _ = tokio::task::spawn_blocking(crate::dnssec::kept::finish_writes).await;
                    super::exit::stopped();
                }
                Signal::Replace => {
                    tracing::warn!("SIGUSR2 while starting: nothing to replace yet; ignored");
                }
            },
        }
    }
}

/// The embedded default, listening where the command line says.
fn embedded(listen: &super::EmbeddedListen) -> ConfigSource {
    ConfigSource::embedded_with(&listen.listen, listen.admin.as_deref())
}

/// `gto probe`: health checks and votes only.
fn probe(source: ConfigSource) -> ExitCode {
    with_runtime(|| async move {
        let (loaded, signals, _) = match load_with_signals(&source).await {
            Ok(started) => started,
            Err(code) => return code,
        };
        match crate::agent::run(loaded, signals).await {
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
    crate::rlimit::raise_nofile();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => {
            let code = runtime.block_on(main());
            // Whatever still runs (a blocking read of a reload under way, idle threads)
            // is not waited for: the listeners are shut, and the process exits now,
            // without which a restart's silence would last as long as the joins.
            runtime.shutdown_background();
            code
        }
        Err(error) => fail(&error),
    }
}

/// The signals, installed first (a SIGHUP or SIGTERM while the zones load must not kill
/// gto), then the config loaded off the runtime's threads. Returns the config, the
/// signals and whether a SIGHUP arrived meanwhile; or the exit code (SIGTERM while
/// loading: 0; a bad config: 64).
async fn load_with_signals(source: &ConfigSource) -> Result<(Loaded, Signals, bool), ExitCode> {
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
                Signal::Replace => {
                    tracing::warn!("SIGUSR2 while starting: nothing to replace yet; ignored");
                }
            },
        }
    };
    match loaded {
        Ok(Ok(loaded)) => Ok((loaded, signals, reload_queued)),
        Ok(Err(errors)) => Err(report(&errors)),
        Err(error) => Err(fail(&error)),
    }
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
        super::exit::JSON.store(true, std::sync::atomic::Ordering::Relaxed);
        // Flat: the message and the event's fields at the top level of each line.
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}
