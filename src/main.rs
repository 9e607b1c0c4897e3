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
    /// Print the StatefulLocalVolume CustomResourceDefinition as YAML.
    Crd,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    berth::tls::install_crypto_provider();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Controller(args) => {
            berth::telemetry::init();
            berth::controller::run(args).await.map_err(|e| e.to_string())
        }
        Command::Agent(args) => {
            berth::telemetry::init();
            berth::agent::run(args).await.map_err(|e| e.to_string())
        }
        Command::Crd => berth::crd::crd_yaml()
            .map(|y| print!("{y}"))
            .map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
