//! The `gto` binary: parse the command line, set up logging, load the config (exit 64 if
//! it is bad), then serve until a signal says stop.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use gto::cli::{Cli, Command};
use gto::{App, ConfigSource, EXIT_BAD_CONFIG};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    match cli.command {
        None => serve(ConfigSource::Embedded),
        Some(Command::Run { config }) => {
            serve(config.map_or(ConfigSource::Embedded, ConfigSource::File))
        }
        Some(Command::Check { config }) => check(ConfigSource::File(config)),
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
    match source.load() {
        Ok(loaded) => {
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

fn report(errors: &gto::config::ConfigErrors) -> ExitCode {
    let mut stderr = std::io::stderr();
    for error in errors.iter() {
        let _ = writeln!(stderr, "error: {error}");
    }
    let _ = writeln!(stderr, "{} problem(s) found", errors.len());
    ExitCode::from(EXIT_BAD_CONFIG)
}

fn serve(source: ConfigSource) -> ExitCode {
    let loaded = match source.load() {
        Ok(loaded) => loaded,
        Err(errors) => return report(&errors),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&error),
    };
    runtime.block_on(async move {
        match App::start(source, loaded).await {
            Ok(app) => match app.run_until_signal().await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => fail(&error),
            },
            Err(error) => fail(&error),
        }
    })
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
