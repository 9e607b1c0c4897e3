//! `marathon-sim --listen 127.0.0.1:8080 --agent host=node-1,id=S1,attr.rack=r1,disk=10000 ...`

use std::process::ExitCode;
use std::time::Duration;

use marathon_sim::{AgentConfig, Config, DockerMode, Simulator};

const USAGE: &str = "usage: marathon-sim [--listen ADDR] [--agent host=H,id=ID,disk=MIB,attr.K=V]... \
[--step-ms MS] [--marathon-version V] [--basic-auth USER:PASSWORD] [--dcos-token TOKEN] \
[--docker [--docker-host unix:///path/docker.sock] [--docker-root HOST=DIR]...]";

fn parse_args() -> Result<Config, String> {
    let mut config = Config {
        listen: ([127, 0, 0, 1], 8080).into(),
        ..Config::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--listen" => config.listen = value()?.parse().map_err(|e| format!("--listen: {e}"))?,
            "--agent" => config.agents.push(AgentConfig::parse(&value()?)?),
            "--step-ms" => {
                config.step = Duration::from_millis(value()?.parse().map_err(|e| format!("--step-ms: {e}"))?)
            }
            "--marathon-version" => config.marathon_version = value()?,
            "--basic-auth" => {
                let text = value()?;
                let (user, password) = text.split_once(':').ok_or("--basic-auth takes USER:PASSWORD")?;
                config.basic_auth = Some((user.to_string(), password.to_string()));
            }
            "--dcos-token" => config.dcos_token = Some(value()?),
            "--docker" => {
                config.docker.get_or_insert_with(DockerMode::default);
            }
            "--docker-host" => {
                let host = value()?;
                config.docker.get_or_insert_with(DockerMode::default).docker_host = Some(host);
            }
            "--docker-root" => {
                let root = value()?;
                config
                    .docker
                    .get_or_insert_with(DockerMode::default)
                    .add_root(&root)
                    .map_err(|e| format!("--docker-root: {e}"))?;
            }
            "--help" | "-h" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument '{other}'\n{USAGE}")),
        }
    }
    if config.agents.is_empty() {
        return Err(format!("at least one --agent is needed\n{USAGE}"));
    }
    Ok(config)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let config = match parse_args() {
        Ok(config) => config,
        Err(message) => {
            eprintln!("marathon-sim: {message}");
            return ExitCode::FAILURE;
        }
    };
    let sim = match Simulator::start(config).await {
        Ok(sim) => sim,
        Err(e) => {
            eprintln!("marathon-sim: cannot listen: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("marathon-sim listening on {}", sim.url());
    if let Err(e) = tokio::signal::ctrl_c().await {
        eprintln!("marathon-sim: cannot wait for Ctrl-C: {e}");
    }
    sim.shutdown().await;
    ExitCode::SUCCESS
}
