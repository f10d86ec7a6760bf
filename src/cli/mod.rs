//! Command line: `gto` (embedded default), `gto run --config FILE`, `gto check --config FILE`,
//! `gto reload --config FILE [--pid PID]`, `gto replace --config FILE [--pid PID]`.

pub mod ctl;
pub mod dnssec;
pub mod exit;
mod reload;
mod replace;
pub mod run;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// `gto --version`: the release, the commit and the build date.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("GTO_COMMIT"),
    ", built ",
    env!("GTO_BUILD_DATE"),
    ")"
);

/// gto: an authoritative DNS server that answers each client with its best VPN endpoints.
#[derive(Debug, Parser)]
#[command(name = "gto", version = VERSION, about)]
pub struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    pub log_json: bool,
    /// Where the embedded default listens, when no subcommand is given.
    #[command(flatten)]
    pub embedded: EmbeddedListen,
    /// What to do; with none, serve the embedded default on 127.0.0.1:5353.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// `--listen` and `--admin` for the embedded default (no `--config`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EmbeddedListen {
    /// DNS listen address (repeat for more), e.g. 0.0.0.0:5353; default 127.0.0.1:5353.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Vec<String>,
    /// Admin API listen address; default 127.0.0.1:8053.
    #[arg(long, value_name = "ADDR:PORT")]
    pub admin: Option<String>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve DNS from a config file (or the embedded default without --config).
    Run {
        /// TOML config file.
        #[arg(long, short, conflicts_with_all = ["listen", "admin"])]
        config: Option<PathBuf>,
        /// Where the embedded default listens (without --config).
        #[command(flatten)]
        embedded: EmbeddedListen,
    },
    /// Print the embedded default config (`gto config example > gto.toml` to start one).
    Config {
        /// What to print.
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// The answer CLIENT would get for NAME, and why, from the config and the state file
    /// (offline: binds nothing, probes nothing). Prints JSON.
    Explain {
        /// TOML config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Record type.
        #[arg(long = "type", short = 't', default_value = "A")]
        qtype: String,
        /// The name asked for, e.g. vpn.gto.example.com.
        name: String,
        /// The client's address (203.0.113.7) or the prefix its resolver's ECS option
        /// carries (10.3.1.0/24).
        client: String,
    },
    /// Run the health checks of a config and vote in its fleet (`[cluster]`), serving no
    /// DNS and no admin API: a probe-only agent that adds a vantage point.
    Probe {
        /// TOML config file (with a `[cluster]` table).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Load the config and every zone file, report all problems, bind nothing. Exit 0 when
    /// valid, 64 when not.
    Check {
        /// TOML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Have the running server read its config and zones again and wait for the outcome:
    /// exit 0 when applied, 64 when refused (the problems on stderr; the running config
    /// keeps serving), 69 when the outcome cannot be learned. With --pid it signals the
    /// process (SIGHUP) and watches GET /v1/status; without, it asks POST /v1/reload with
    /// the config's admin token. With the admin API off, it checks the config first (a
    /// refused one is not signalled) and then only signals.
    Reload {
        /// The config file the server runs (for its admin address and token).
        #[arg(long, short)]
        config: PathBuf,
        /// The server's process id (systemd's $MAINPID).
        #[arg(long)]
        pid: Option<i32>,
    },
    /// Replace the running server with the binary at its path (after an upgrade, the new
    /// one) without losing a query: the new process takes over its sockets. Exit 0 once it
    /// serves and the old one has exited, 1 when it failed (the old one goes on serving),
    /// 69 when the outcome cannot be learned.
    Replace {
        /// The config file the server runs (for its admin address).
        #[arg(long, short)]
        config: PathBuf,
        /// The server's process id (default: as its admin API reports it).
        #[arg(long)]
        pid: Option<i32>,
    },
    /// The running server, from the command line: status, drain, undrain, explain,
    /// reload, events, check-fleet (its admin API; see gto-ctl(1) for the exit codes).
    Ctl(ctl::Ctl),
    /// DNSSEC key management: make keys, print the DS for the parent, show key states,
    /// start a rollover.
    #[command(subcommand)]
    Dnssec(DnssecCommand),
    /// Write the man pages (gto.1 and one per subcommand) and shell completions (bash,
    /// zsh, fish) into DIR, for packaging.
    #[command(hide = true)]
    Assets {
        /// Output directory (created if missing).
        dir: PathBuf,
    },
}

/// `gto config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// The embedded default config, with its comments: what `gto` with no arguments serves.
    Example,
}

/// `gto dnssec ...`.
#[derive(Debug, Subcommand)]
pub enum DnssecCommand {
    /// Make a key for a zone in a key directory (active now). Prints the DS of a CSK or
    /// KSK for the parent zone.
    Keygen {
        /// The zone, e.g. gto.example.com.
        #[arg(long)]
        zone: String,
        /// The key directory (created if missing); `dnssec = { keys = "DIR" }` names it.
        #[arg(long)]
        dir: PathBuf,
        /// ecdsap256sha256 (13, the default) or ed25519 (15).
        #[arg(long, default_value = "ecdsap256sha256")]
        algorithm: String,
        /// csk (one combined key, the default), or ksk / zsk for a split.
        #[arg(long, default_value = "csk")]
        role: String,
        /// TTL written in the .key file's DNSKEY record.
        #[arg(long, default_value_t = 3600)]
        dnskey_ttl: u32,
    },
    /// Print the DS records (SHA-256) and DNSKEYs for the parent zone, for every signed
    /// zone of a config.
    Ds {
        /// TOML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show every key of every signed zone: its state, timeline and next step.
    Status {
        /// TOML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Start a pre-publication rollover of a zone's active key now: a successor is
    /// published, and signs once caches have seen it.
    Rollover {
        /// TOML config file.
        #[arg(long, short)]
        config: PathBuf,
        /// The zone.
        #[arg(long)]
        zone: String,
        /// Which key: csk (default), zsk or ksk.
        #[arg(long, default_value = "csk")]
        role: String,
    },
    /// Tell gto that the parent zone serves the DS of the new KSK or CSK: the old one,
    /// kept until now, is removed once the parent's old DS can have left every cache.
    DsSeen {
        /// TOML config file.
        #[arg(long, short)]
        config: PathBuf,
        /// The zone.
        #[arg(long)]
        zone: String,
    },
}

/// The sections of gto(1) after its subcommands: FILES, SIGNALS, ENVIRONMENT, EXIT
/// STATUS, EXAMPLES, SEE ALSO (roff).
const GTO_1_SECTIONS: &str = include_str!("man/gto.1.sections");

/// gto.toml(5), the config file's page (roff).
const GTO_TOML_5: &str = include_str!("man/gto.toml.5");

/// Writes `gto.1`, `gto.toml.5`, one page per subcommand (`gto-run.1`, `gto-dnssec.1`, ...) and the completions
/// `gto.bash`, `_gto` (zsh) and `gto.fish` into `dir`.
pub fn write_assets(dir: &std::path::Path) -> std::io::Result<()> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir)?;
    let command = Cli::command();
    // gto(1): the options and subcommands from the CLI, then what clap cannot know
    // (files, signals, environment, exit status, examples), written by hand.
    let man = clap_mangen::Man::new(command.clone());
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    man.render_subcommands_section(&mut page)?;
    page.extend_from_slice(GTO_1_SECTIONS.as_bytes());
    man.render_version_section(&mut page)?;
    std::fs::write(dir.join("gto.1"), page)?;
    std::fs::write(dir.join("gto.toml.5"), GTO_TOML_5)?;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("gto-{}", sub.get_name());
        let sub = sub.clone().name(name.clone());
        let mut page = Vec::new();
        clap_mangen::Man::new(sub).render(&mut page)?;
        std::fs::write(dir.join(format!("{name}.1")), page)?;
    }
    for (shell, file) in [
        (clap_complete::Shell::Bash, "gto.bash"),
        (clap_complete::Shell::Zsh, "_gto"),
        (clap_complete::Shell::Fish, "gto.fish"),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "gto", &mut out);
        std::fs::write(dir.join(file), out)?;
    }
    Ok(())
}
