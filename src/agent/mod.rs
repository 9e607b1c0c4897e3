//! The berth agent: a small privileged HTTP service on each container host, and the only part of
//! berth that touches a host's files. See `docs/agent.md`.
//!
//! - [`api`]: JSON wire types shared with the controller.
//! - [`attributes`]: the host's Mesos attributes, for placement by attribute constraints.
//! - [`credentials`]: per-host tokens derived from the controller's secret (`berth agent-token`).
//! - [`remap`]: `/etc/subuid`/`/etc/subgid` parsing and container→host id mapping.
//! - [`safe_fs`]: fd-relative, no-follow, no-mount-crossing file operations.
//! - [`ops`]: validation plus the operations (`ensure`, `inspect`, `delete`, `host_info`, `usage`).
//! - [`quota`]: capacity limits (btrfs qgroups, XFS project quotas) and usage by quota or walk.
//! - [`deletes`]: deletes that outlive their request, one walk per path.
//! - [`server`]: routes, bearer-token auth, TLS, connection limits and timeouts.
//! - [`client`]: the controller's typed client.

pub mod api;
pub mod attributes;
pub mod client;
pub mod credentials;
pub mod deletes;
pub mod identity;
pub mod manifest;
pub mod ops;
pub mod quota;
pub mod remap;
pub mod safe_fs;
pub mod server;
pub mod transfer;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

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
    /// Tenant root template; its directory (e.g. /containerdata) is the agent's root and must
    /// exist (see --create-root).
    #[arg(long, default_value = crate::tenant::DEFAULT_ROOT_TEMPLATE)]
    pub root_template: String,
    /// Create the directory holding the tenant roots (root-owned, 0755) when it is missing,
    /// instead of refusing to start.
    #[arg(long)]
    pub create_root: bool,
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
    /// Most connections open at once; beyond it the oldest idle connection is closed.
    #[arg(long, env = "BERTH_AGENT_MAX_CONNECTIONS", default_value_t = 128)]
    pub max_connections: usize,
    /// Time a client has to finish the TLS handshake and to send a request's head and body; a
    /// keep-alive connection idle this long is closed (e.g. 10s, 500ms, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// On SIGTERM, how long requests in flight may still run before the agent exits.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// How long a DELETE waits for its walk before answering 409 delete_in_progress (the walk
    /// goes on; the next DELETE of the path gets its result).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub delete_wait: Duration,
    /// Turn quota (btrfs qgroups) on at start when it is off, so capacities become limits; the
    /// agent then refuses to start where it cannot enforce them.
    #[arg(long)]
    pub enable_quota: bool,
    /// Usage of volumes without quota accounting is measured by walking them, at most this often
    /// per volume (a usage answer may be that old).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub usage_walk_interval: Duration,
    /// PEM bundle of the CA that signed the other agents' certificates, to check them when this
    /// agent sends a volume to another (default: the system's roots).
    #[arg(long, value_name = "PATH")]
    pub peer_ca_file: Option<PathBuf>,
}

/// Parses `500ms`, `10s`, `2m` or a number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 10s, 500ms or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        _ => Err(format!("{s:?}: use the unit ms, s or m (e.g. 10s)")),
    }
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
    let missing = |file: &str| {
        AgentError::Config(format!(
            "{file} does not exist, so the remap user {user:?} has no subordinate id ranges; add the ranges Docker's userns-remap uses, pass --uid-map/--gid-map, or pass --no-remap if Docker runs without userns-remap"
        ))
    };
    let uids = match read(&args.subuid_file)? {
        Some(s) => IdMap::parse_subid(&uid_name, &s, user).map_err(cfg)?,
        None => return Err(missing(&uid_name)),
    };
    let gids = match read(&args.subgid_file)? {
        Some(s) => IdMap::parse_subid(&gid_name, &s, user).map_err(cfg)?,
        None => return Err(missing(&gid_name)),
    };
    if uids.is_identity() != gids.is_identity() {
        return Err(AgentError::Config(format!(
            "user {user:?} has ranges in only one of {uid_name} and {gid_name}; add the missing lines or pass --no-remap"
        )));
    }
    if uids.is_identity() {
        return Err(AgentError::Config(format!(
            "the remap user {user:?} has no ranges in {uid_name} and {gid_name}; name the user Docker's userns-remap uses with --remap-user, pass --uid-map/--gid-map, or pass --no-remap if Docker runs without userns-remap"
        )));
    }
    Ok((uids, gids, format!("{uid_name} and {gid_name} for user {user}")))
}

/// File descriptors kept for everything but connections (walks hold up to 256 at a time).
const FDS_BESIDES_CONNECTIONS: u64 = 128;

/// Raises the open-file soft limit to the hard limit and returns the soft limit.
fn raise_nofile_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        l.current = l.maximum;
        let _ = setrlimit(Resource::Nofile, l);
    }
    getrlimit(Resource::Nofile).current
}

/// `--max-connections`, lowered when the open-file limit could not hold that many.
fn connection_cap(wanted: usize, nofile: Option<u64>) -> usize {
    let wanted = wanted.max(1);
    let Some(limit) = nofile else {
        return wanted;
    };
    let room = usize::try_from(limit.saturating_sub(FDS_BESIDES_CONNECTIONS)).unwrap_or(usize::MAX);
    if room >= wanted {
        return wanted;
    }
    let cap = room.max(8);
    warn!(
        wanted,
        cap,
        nofile = limit,
        "the open-file limit cannot hold --max-connections connections: serving at most {cap}; raise LimitNOFILE"
    );
    cap
}

/// Warns about a secret file that group or others can read.
fn warn_if_exposed(path: &std::path::Path, what: &str) {
    if let Some(w) = credentials::exposure_warning(path, what) {
        warn!("{w}");
    }
}

/// `berth agent`.
pub async fn run(args: AgentArgs) -> Result<(), AgentError> {
    crate::tls::install_crypto_provider();
    let nofile = raise_nofile_limit();
    if let Some(p) = &args.token_file {
        warn_if_exposed(p, "token file");
    }
    let token = load_token(args.token_file.as_deref())?;
    let (uid_map, gid_map, remap_source) = load_remap(&args)?;
    let hostname = match &args.hostname {
        Some(h) if !h.trim().is_empty() => h.trim().to_owned(),
        Some(_) => return Err(AgentError::Config("--hostname is empty".into())),
        None => rustix::system::uname().nodename().to_string_lossy().into_owned(),
    };
    let attributes = attributes::load(&args.attributes).map_err(AgentError::Config)?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => {
            warn_if_exposed(k, "TLS private key");
            Some(server::load_tls(c, k)?)
        }
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
        create_root: args.create_root,
        delete_wait: args.delete_wait,
        enable_quota: args.enable_quota,
        usage_walk_interval: args.usage_walk_interval,
        peer_ca_pem: match &args.peer_ca_file {
            Some(p) => Some(std::fs::read(p).map_err(|e| {
                AgentError::Config(format!("cannot read --peer-ca-file {}: {e}", p.display()))
            })?),
            None => None,
        },
    })?);
    let options = server::ServeOptions {
        header_timeout: args.header_timeout,
        max_connections: connection_cap(args.max_connections, nofile),
        shutdown_timeout: args.shutdown_timeout,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| AgentError::Bind {
            addr: args.listen,
            source,
        })?;
    let token_source = match &args.token_file {
        Some(p) => format!("file {}", p.display()),
        None => format!("${TOKEN_ENV}"),
    };
    info!(listen = %args.listen, tls = tls.is_some(), hostname = %hostname,
          root_template = %args.root_template, remap = %agent.config().remap_source,
          seed_allow = ?args.seed_allow, max_connections = options.max_connections,
          header_timeout = ?options.header_timeout, "berth agent started");
    info!(token = %token_source,
          "bearer token loaded; give each host its own token: `berth agent-token --secret-file SECRET --host {hostname}` prints this host's, and the controller derives the same from the secret, so a token read on this host works on no other");
    let router = server::router(agent.clone(), token);
    let served = server::serve_with(listener, router, tls, options, shutdown_signal()).await;
    // Walks still running (a big delete) stop at their next entry; a retry resumes them.
    agent.cancel();
    info!("stopped");
    served
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
