//! The `berth` binary: one executable for the controller, the host agent and tooling.
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "Stateful local volumes for Marathon apps, declared as Kubernetes custom resources"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller: reconcile StatefulLocalVolumes with Marathon and the hosts' agents.
    Controller(berth::controller::ControllerArgs),
    /// Run the host agent: the only part of berth that touches a host's files.
    Agent(berth::agent::AgentArgs),
    /// Print the agent token of one host, derived from the controller's agent secret.
    AgentToken(berth::agent::credentials::AgentTokenArgs),
    /// Print the StatefulLocalVolume CustomResourceDefinition as YAML.
    Crd,
    /// Move a volume, and the other volumes of its Marathon app, to another host.
    #[command(long_about = berth::cli::MIGRATE_ABOUT)]
    Migrate(berth::cli::MigrateArgs),
    /// Move every volume off a host, one Marathon app at a time.
    #[command(long_about = berth::cli::DRAIN_ABOUT)]
    Drain(berth::cli::DrainArgs),
}

/// Exit status for a configuration that cannot start (as for a bad command line).
const EXIT_CONFIG: u8 = 2;

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(run()),
        Err(e) => {
            eprintln!("berth: cannot start the async runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// glibc gives threads that allocate at once arenas of their own, up to eight per core, and
/// frees into an arena seldom go back to the system: at 10,000 volumes, a third of the
/// controller's resident memory was free space held that way (docs/benchmarks.md). Two arenas
/// cost no measurable CPU.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    // SAFETY: mallopt only sets a parameter of the allocator, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

async fn run() -> std::process::ExitCode {
    berth::tls::install_crypto_provider();
    let cli = Cli::parse();
    if let Err(e) = berth::telemetry::init() {
        eprintln!("berth: {e}");
        return std::process::ExitCode::from(EXIT_CONFIG);
    }
    let result = match cli.command {
        Command::Controller(args) => berth::controller::run(args)
            .await
            .map_err(|e| berth::report::error_chain(&e)),
        Command::Agent(args) => berth::agent::run(args)
            .await
            .map_err(|e| berth::report::error_chain(&e)),
        Command::AgentToken(args) => {
            berth::agent::credentials::run_agent_token(&args).map_err(|e| berth::report::error_chain(&e))
        }
        Command::Migrate(args) => return berth::cli::migrate::run(args).await,
        Command::Drain(args) => return berth::cli::drain::run(args).await,
        Command::Crd => berth::crd::crd_yaml()
            .map(|y| print!("{y}"))
            .map_err(|e| berth::report::error_chain(&e)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
