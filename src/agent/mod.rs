//! The berth agent: a small privileged HTTP service on each container host, and the only part of
//! berth that touches a host's files. See `docs/agent.md`.
//!
//! - [`api`]: JSON wire types shared with the controller.
//! - [`attributes`]: the host's Mesos attributes, for placement by attribute constraints.
//! - [`remap`]: `/etc/subuid`/`/etc/subgid` parsing and container→host id mapping.
//! - [`safe_fs`]: fd-relative, no-follow, no-mount-crossing file operations.
//! - [`ops`]: validation plus the operations (`ensure`, `inspect`, `delete`, `host_info`).
//! - [`server`]: routes, bearer-token auth, TLS.
//! - [`client`]: the controller's typed client.

pub mod api;
pub mod attributes;
pub mod client;
pub mod ops;
pub mod remap;
pub mod safe_fs;
pub mod server;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use thiserror::Error;
use tracing::{info, warn};

pub use ops::{Agent, AgentConfig, OpError};
use remap::IdMap;
pub use server::Token;

/// Environment variable holding the token when `--token-file` is not given.
pub const TOKEN_ENV: &str = "BERTH_AGENT_TOKEN";

/// `berth agent` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// Address to listen on.
    #[arg(long, env = "BERTH_AGENT_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// File holding the bearer token (else the BERTH_AGENT_TOKEN environment variable).
    #[arg(long, env = "BERTH_AGENT_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM certificate chain to serve TLS with (needs --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Tenant root template; its directory (e.g. /containerdata) is the agent's root.
    #[arg(long, default_value = crate::tenant::DEFAULT_ROOT_TEMPLATE)]
    pub root_template: String,
    /// Hostname as Marathon/Mesos sees this host (default: the kernel's node name). Set it to
    /// the Mesos agent's --hostname when that is set.
    #[arg(long, env = "BERTH_AGENT_HOSTNAME")]
    pub hostname: Option<String>,
    /// The host's Mesos attributes, exactly as the Mesos agent's --attributes (rack:r1;zone:west),
    /// or file:///PATH holding them. berth's placement then honours the app's attribute
    /// constraints; without them it can only check hostname constraints.
    #[arg(long, env = "BERTH_AGENT_ATTRIBUTES", default_value = "")]
    pub attributes: String,
    /// User whose /etc/subuid and /etc/subgid ranges Docker's userns-remap uses.
    #[arg(long, default_value = "dockremap")]
    pub remap_user: String,
    #[arg(long, default_value = "/etc/subuid")]
    pub subuid_file: PathBuf,
    #[arg(long, default_value = "/etc/subgid")]
    pub subgid_file: PathBuf,
    /// Host uid ranges START:COUNT[,START:COUNT...] (overrides --subuid-file).
    #[arg(long, requires = "gid_map")]
    pub uid_map: Option<String>,
    /// Host gid ranges START:COUNT[,START:COUNT...] (overrides --subgid-file).
    #[arg(long, requires = "uid_map")]
    pub gid_map: Option<String>,
    /// Apply no remap at all (container id N is host id N), e.g. without userns-remap.
    #[arg(long, conflicts_with_all = ["uid_map", "gid_map"])]
    pub no_remap: bool,
    /// Host file that `seed.copyFromHost` may copy (repeatable), e.g. /etc/localtime.
    #[arg(long = "seed-allow", value_name = "PATH")]
    pub seed_allow: Vec<PathBuf>,
    /// Largest seed, in bytes.
    #[arg(long, default_value_t = ops::DEFAULT_MAX_SEED_BYTES)]
    pub max_seed_bytes: u64,
}

/// Why the agent could not start or stopped.
#[derive(Debug, Error)]
pub enum AgentError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}; choose a free address with --listen")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// Reads the token from `--token-file` or `$BERTH_AGENT_TOKEN`.
pub fn load_token(file: Option<&std::path::Path>) -> Result<Token, AgentError> {
    match file {
        Some(p) => {
            let s = std::fs::read_to_string(p).map_err(|e| {
                AgentError::Config(format!("cannot read the token file {}: {e}", p.display()))
            })?;
            Token::new(&s)
        }
        None => match std::env::var(TOKEN_ENV) {
            Ok(s) => Token::new(&s),
            Err(_) => Err(AgentError::Config(format!(
                "no token: pass --token-file or set {TOKEN_ENV}; the agent never serves without authentication"
            ))),
        },
    }
}

/// Resolves the remap from flags or the subordinate id files.
pub fn load_remap(args: &AgentArgs) -> Result<(IdMap, IdMap, String), AgentError> {
    let cfg = |e: remap::RemapError| AgentError::Config(e.to_string());
    if args.no_remap {
        return Ok((IdMap::identity(), IdMap::identity(), "--no-remap".into()));
    }
    if let (Some(u), Some(g)) = (&args.uid_map, &args.gid_map) {
        return Ok((
            IdMap::parse_flag("--uid-map", u).map_err(cfg)?,
            IdMap::parse_flag("--gid-map", g).map_err(cfg)?,
            "--uid-map/--gid-map".into(),
        ));
    }
    let read = |p: &std::path::Path| -> Result<Option<String>, AgentError> {
        match std::fs::read_to_string(p) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(AgentError::Config(format!("cannot read {}: {e}", p.display()))),
        }
    };
    let user = &args.remap_user;
    let uid_name = args.subuid_file.display().to_string();
    let gid_name = args.subgid_file.display().to_string();
    let uids = match read(&args.subuid_file)? {
        Some(s) => IdMap::parse_subid(&uid_name, &s, user).map_err(cfg)?,
        None => IdMap::identity(),
    };
    let gids = match read(&args.subgid_file)? {
        Some(s) => IdMap::parse_subid(&gid_name, &s, user).map_err(cfg)?,
        None => IdMap::identity(),
    };
    if uids.is_identity() != gids.is_identity() {
        return Err(AgentError::Config(format!(
            "user {user:?} has ranges in only one of {uid_name} and {gid_name}; add the missing lines or pass --no-remap"
        )));
    }
    if uids.is_identity() {
        warn!(user = %user, subuid = %uid_name, "no subordinate id ranges for the remap user: container ids are used as host ids (no remap); pass --no-remap to silence this if Docker runs without userns-remap");
    }
    Ok((uids, gids, format!("{uid_name} and {gid_name} for user {user}")))
}

/// Raises the open-file soft limit to the hard limit (deep trees hold one fd per level).
fn raise_nofile_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        l.current = l.maximum;
        let _ = setrlimit(Resource::Nofile, l);
    }
}

/// `berth agent`.
pub async fn run(args: AgentArgs) -> Result<(), AgentError> {
    crate::tls::install_crypto_provider();
    raise_nofile_limit();
    let token = load_token(args.token_file.as_deref())?;
    let (uid_map, gid_map, remap_source) = load_remap(&args)?;
    let hostname = match &args.hostname {
        Some(h) if !h.trim().is_empty() => h.trim().to_owned(),
        Some(_) => return Err(AgentError::Config("--hostname is empty".into())),
        None => rustix::system::uname().nodename().to_string_lossy().into_owned(),
    };
    for p in &args.seed_allow {
        if !p.is_absolute() {
            return Err(AgentError::Config(format!(
                "--seed-allow {}: use an absolute path",
                p.display()
            )));
        }
    }
    let attributes = attributes::load(&args.attributes).map_err(AgentError::Config)?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(server::load_tls(c, k)?),
        _ => {
            warn!(
                "serving plain HTTP: the token travels in clear text; use --tls-cert/--tls-key outside a trusted network"
            );
            None
        }
    };
    let agent = Arc::new(Agent::new(AgentConfig {
        root_template: args.root_template.clone(),
        hostname: hostname.clone(),
        attributes,
        uid_map,
        gid_map,
        remap_source,
        seed_allow: args.seed_allow.clone(),
        max_seed_bytes: args.max_seed_bytes,
    })?);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| AgentError::Bind {
            addr: args.listen,
            source,
        })?;
    info!(listen = %args.listen, tls = tls.is_some(), hostname = %hostname,
          root_template = %args.root_template, remap = %agent.config().remap_source, "berth agent started");
    let router = server::router(agent, token);
    server::serve(listener, router, tls, shutdown_signal()).await
}

/// Resolves on SIGINT or SIGTERM (what systemd and Marathon send).
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    info!("shutting down");
}
