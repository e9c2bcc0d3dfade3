//! The `freeway` command line: parse, load config, build the server, run.

use clap::{CommandFactory, Parser, Subcommand};
use freeway::config::Config;
use freeway::server::{self, ProcessFlags};
use std::path::PathBuf;

// mimalloc: the request path allocates and frees many small buffers (Pingora's and ours);
// it cut the gateway's CPU per request measurably versus glibc malloc (see README, Performance).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Has mimalloc commit its arena as it is used rather than all at once. Eagerly committed,
/// every 2 MiB of the arena the gateway touches is backed by a transparent huge page where
/// the kernel's THP setting is `always` (Debian's and Ubuntu's default): an idle gateway
/// held 29.7 MB, 18.5 MB committed lazily, at the same CPU per request.
///
/// The arena is reserved at the first allocation, and Rust's runtime allocates before
/// `main`: so this runs as an ELF constructor (`.init_array`), before the runtime. The
/// option keeps its value whether mimalloc's own constructor reads its options before or
/// after this one.
#[used]
#[link_section = ".init_array.00200"]
static COMMIT_LAZILY: extern "C" fn() = {
    extern "C" fn commit_lazily() {
        extern "C" {
            fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
        }
        /// `mi_option_arena_eager_commit` in mimalloc 3's `mi_option_t`.
        const ARENA_EAGER_COMMIT: std::ffi::c_int = 4;
        // SAFETY: mimalloc's documented option setter, with a valid option and value; it
        // only changes how arenas reserved from then on are committed.
        unsafe { mi_option_set(ARENA_EAGER_COMMIT, 0) }
    }
    commit_lazily
};

/// `freeway --version`: `freeway <semver> (<git commit>)`; the commit comes from build.rs.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("FREEWAY_GIT_COMMIT"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "freeway",
    version = VERSION,
    about = "An OpenAI-compatible AI gateway on Pingora"
)]
struct Cli {
    /// Config file (default: $FREEWAY_CONFIG, else conf/freeway.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Check the config and exit 0 (valid) or 1 (invalid, with the bad key named).
    #[arg(short = 't', long = "test")]
    test: bool,
    /// Run in the background.
    #[arg(short, long)]
    daemon: bool,
    /// Take over the listening sockets of a running freeway (zero-downtime upgrade).
    #[arg(short, long)]
    upgrade: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway in front of built-in simulated providers (no keys needed).
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        #[arg(long, default_value = "127.0.0.1:18080")]
        sim_listen: String,
    },
    /// Print the `label:sha256` line for [auth].key_hashes.
    HashKey {
        key: String,
        #[arg(long, default_value = "key")]
        label: String,
    },
    /// Run only the simulated providers (used by the tests and the load bench).
    #[command(hide = true)]
    Sim {
        #[arg(long, required = true)]
        listen: Vec<String>,
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Write the man page and the bash, zsh and fish completions into a directory (used by
    /// scripts/deb.sh when it builds the Debian package).
    #[command(hide = true)]
    PackageAssets { dir: PathBuf },
}

/// The man pages (freeway.1 and one per visible subcommand, which freeway.1 refers to),
/// freeway.bash, _freeway (zsh) and freeway.fish, all from the clap definition.
fn write_package_assets(dir: &std::path::Path) -> std::io::Result<()> {
    use clap_complete::Shell;
    std::fs::create_dir_all(dir)?;
    let cmd = Cli::command();
    clap_mangen::generate_to(cmd.clone(), dir)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "freeway", dir)?;
    }
    Ok(())
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // One format for every line on stdout (the access log follows the same choice).
    // Colours only for a person at a terminal: escape codes in a file or a pipe are noise.
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal());
    let _ = if freeway::observe::json_logs() {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("freeway: {msg}");
    std::process::exit(1)
}

fn main() {
    let cli = Cli::parse();
    let flags = ProcessFlags {
        daemon: cli.daemon,
        upgrade: cli.upgrade,
    };
    match cli.command {
        Some(Command::HashKey { key, label }) => {
            println!("{}", freeway::auth::hash_key_line(&label, &key));
        }
        Some(Command::PackageAssets { dir }) => {
            write_package_assets(&dir).unwrap_or_else(|e| fail(format!("{}: {e}", dir.display())));
        }
        Some(Command::Sim { listen, threads }) => {
            init_logging();
            server::build_sim(&listen, threads.max(1)).run_forever();
        }
        Some(Command::Demo { listen, sim_listen }) => {
            init_logging();
            let config = freeway::demo::config(&listen, &sim_listen).unwrap_or_else(|e| fail(e));
            // Log lines like every other, so stdout keeps one format (JSON in a pipe).
            tracing::info!(
                "freeway demo: gateway on http://{listen}, SIMULATED providers on http://{sim_listen}"
            );
            tracing::info!(
                "try:  curl -s http://{listen}/v1/chat/completions -H 'content-type: application/json' \
                 -d '{{\"model\":\"auto\",\"messages\":[{{\"role\":\"user\",\"content\":\"hello\"}}]}}'"
            );
            server::build(config, None, flags, &[sim_listen]).run_forever();
        }
        None => {
            let path = cli.config.unwrap_or_else(Config::default_path);
            let config = Config::load(&path).unwrap_or_else(|e| fail(e));
            // Reloads re-read this file; an absolute path survives a daemon's chdir.
            let path = std::fs::canonicalize(&path).unwrap_or(path);
            if cli.test {
                println!("freeway: config {} is valid", path.display());
                return;
            }
            init_logging();
            server::build(config, Some(path), flags, &[]).run_forever();
        }
    }
}
