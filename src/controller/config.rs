//! `berth controller` flags. Every flag has an environment variable, so the Helm chart can set
//! them from values and Secrets.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct ControllerArgs {
    /// Marathon base URL, e.g. http://marathon.mesos:8080. Repeat for failover between Marathon
    /// instances (tried in order).
    #[arg(
        long = "marathon-url",
        env = "BERTH_MARATHON_URLS",
        value_delimiter = ',',
        required = true
    )]
    pub marathon_urls: Vec<String>,
    /// User for Marathon's HTTP basic auth (with --marathon-password-file).
    #[arg(long, env = "BERTH_MARATHON_USERNAME")]
    pub marathon_username: Option<String>,
    /// File holding the password for Marathon's HTTP basic auth.
    #[arg(long, env = "BERTH_MARATHON_PASSWORD_FILE")]
    pub marathon_password_file: Option<PathBuf>,
    /// File holding a DC/OS token, sent as `Authorization: token=<token>`.
    #[arg(long, env = "BERTH_MARATHON_TOKEN_FILE")]
    pub marathon_token_file: Option<PathBuf>,
    /// PEM file of the CA that signed Marathon's certificate.
    #[arg(long, env = "BERTH_MARATHON_CA_FILE")]
    pub marathon_ca_file: Option<PathBuf>,
    /// Timeout of one Marathon request.
    #[arg(long, env = "BERTH_MARATHON_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub marathon_timeout: Duration,

    /// A host agent as HOST=URL, HOST being the host name Mesos reports (what Marathon's hostname
    /// constraints match). Repeat, or use --agent-app.
    #[arg(long = "agent", env = "BERTH_AGENTS", value_delimiter = ',', value_parser = parse_agent)]
    pub agents: Vec<(String, String)>,
    /// Find agents from the tasks of this Marathon app (the agent deployed as a Marathon app with a
    /// hostname:UNIQUE constraint): each task's host becomes SCHEME://HOST:PORT.
    #[arg(long, env = "BERTH_AGENT_APP")]
    pub agent_app: Option<String>,
    /// Port of agents found with --agent-app.
    #[arg(long, env = "BERTH_AGENT_PORT", default_value_t = 8443)]
    pub agent_port: u16,
    /// Scheme of agents found with --agent-app.
    #[arg(long, env = "BERTH_AGENT_SCHEME", default_value = "https")]
    pub agent_scheme: String,
    /// File holding the agents' secret: each host's agent token is derived from it
    /// (`berth agent-token --secret-file F --host NAME` prints it), so a token stolen from one
    /// host works on that host only. Mount it from a Secret.
    #[arg(long, env = "BERTH_AGENT_SECRET_FILE", conflicts_with = "agent_token_file")]
    pub agent_secret_file: Option<PathBuf>,
    /// File holding one bearer token shared by every agent (instead of --agent-secret-file).
    #[arg(long, env = "BERTH_AGENT_TOKEN_FILE")]
    pub agent_token_file: Option<PathBuf>,
    /// PEM file of the CA that signed the agents' certificates.
    #[arg(long, env = "BERTH_AGENT_CA_FILE")]
    pub agent_ca_file: Option<PathBuf>,
    /// Timeout of one agent request.
    #[arg(long, env = "BERTH_AGENT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub agent_timeout: Duration,

    /// Where tenant roots live on every host; `{tenant}` must be in the last component.
    #[arg(long, env = "BERTH_TENANT_ROOT", default_value = crate::tenant::DEFAULT_ROOT_TEMPLATE)]
    pub tenant_root: String,
    /// The Marathon group of a tenant's apps; a volume may only name apps inside it.
    #[arg(long, env = "BERTH_APP_GROUP", default_value = crate::tenant::DEFAULT_APP_GROUP_TEMPLATE)]
    pub app_group: String,
    /// Map a namespace to a tenant as NAMESPACE=TENANT (repeat). Other namespaces are tenants of
    /// their own name, unless --mapped-namespaces-only.
    #[arg(long = "tenant-map", env = "BERTH_TENANT_MAP", value_delimiter = ',', value_parser = parse_pair)]
    pub tenant_map: Vec<(String, String)>,
    /// Refuse volumes in namespaces that --tenant-map does not name.
    #[arg(long, env = "BERTH_MAPPED_NAMESPACES_ONLY")]
    pub mapped_namespaces_only: bool,

    /// Watch volumes in these namespaces only (repeat, or separate with commas; default: all
    /// namespaces).
    #[arg(long, env = "BERTH_WATCH_NAMESPACE", value_delimiter = ',')]
    pub namespace: Vec<String>,
    /// Reconcile every volume at least this often, to repair drift in Marathon and on hosts.
    #[arg(long, env = "BERTH_RESYNC", default_value = "5m", value_parser = parse_duration)]
    pub resync: Duration,
    /// Wait this long after a change before reconciling, so that the volumes of one app applied
    /// together reach Marathon in one update.
    #[arg(long, env = "BERTH_DEBOUNCE", default_value = "1s", value_parser = parse_duration)]
    pub debounce: Duration,
    /// How long Marathon or a host's agent may be unreachable before Ready volumes say so
    /// (`Synced=False`); shorter blips write nothing. Volumes that are not Ready say it at once.
    #[arg(long, env = "BERTH_OUTAGE_GRACE", default_value = "60s", value_parser = parse_duration)]
    pub outage_grace: Duration,
    /// Warn when a volume holds this share of its spec.capacity (a Warning event and the
    /// `berth_volume_used_bytes` metric against `berth_volume_capacity_bytes`).
    #[arg(long, env = "BERTH_USAGE_WARNING", default_value_t = 0.9, value_parser = parse_share)]
    pub usage_warning: f64,
    /// How far the capacities promised on a host may exceed its size: 1 promises no more than
    /// the disk holds, 1.5 half as much again (volumes seldom fill their capacity), 0.8 keeps a
    /// fifth of each disk unpromised.
    #[arg(long, env = "BERTH_CAPACITY_OVERCOMMIT", default_value_t = 1.0, value_parser = parse_overcommit)]
    pub capacity_overcommit: f64,
    /// Longest a move to another host keeps an app stopped (scaled to 0 for the last copy):
    /// past it berth gives up, starts the app again on its old host with its data untouched,
    /// and tries again 10 minutes later.
    #[arg(long, env = "BERTH_MIGRATION_STOP_LIMIT", default_value = "5m", value_parser = parse_duration)]
    pub migration_stop_limit: Duration,
    /// Passes over apps that may run at once (each app is passed by one worker at a time).
    #[arg(long, env = "BERTH_WORKERS", default_value_t = 32)]
    pub workers: usize,
    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, env = "BERTH_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Run only while holding a coordination.k8s.io Lease, so that several replicas can stand by.
    #[arg(long, env = "BERTH_LEADER_ELECT")]
    pub leader_elect: bool,
    /// Name of the Lease used with --leader-elect.
    #[arg(long, env = "BERTH_LEASE_NAME", default_value = "berth-controller")]
    pub lease_name: String,
    /// Namespace of the Lease (the chart passes the pod's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// This replica's identity in the Lease (the chart passes the pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
}

/// Parses durations such as `500ms`, `30s`, `5m`, `1h` (or `1h 30m`); zero is refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration such as 500ms, 30s, 5m or 1h ({e})"))?;
    if d.is_zero() {
        return Err(format!("{s:?} is zero; give a positive duration such as 30s"));
    }
    Ok(d)
}

fn parse_share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 1.0 => Ok(v),
        _ => Err(format!("{s:?} is not a share between 0 and 1, such as 0.9")),
    }
}

fn parse_overcommit(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 10.0 => Ok(v),
        _ => Err(format!("{s:?} is not a ratio between 0 and 10, such as 1 or 1.5")),
    }
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

fn parse_agent(s: &str) -> Result<(String, String), String> {
    let (host, url) =
        parse_pair(s).map_err(|_| format!("{s:?} is not HOST=URL, e.g. node-1=https://10.0.0.1:8443"))?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("agent URL {url:?} must start with http:// or https://"));
    }
    Ok((host, url))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("m").is_err());
        assert!(
            parse_duration("0s").unwrap_err().contains("zero"),
            "--resync 0s would pass every app all the time"
        );
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn agents_are_host_equals_url() {
        assert_eq!(
            parse_agent("node-1=https://10.0.0.1:8443"),
            Ok(("node-1".into(), "https://10.0.0.1:8443".into()))
        );
        assert!(parse_agent("node-1").is_err());
        assert!(parse_agent("node-1=10.0.0.1:8443").is_err());
    }
}
