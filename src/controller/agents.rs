//! Where the agents are, and talking to them: a static list from flags and/or the tasks of the
//! agent's own Marathon app, one client per host, a bound on the requests in flight to each
//! agent. This is the one place that turns a host name into an agent, for placement,
//! provisioning and deletion alike.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::future::{BoxFuture, join_all};
use tokio::{sync::Semaphore, time::Instant};
use tracing::{debug, warn};

use super::{
    failure::Failure,
    metrics::Metrics,
    pass::plan::DataRef,
    placement::Candidate,
    ports::{AgentsApi, TransferOrder},
};
use crate::{
    agent::{
        api::{
            BatchResult, CommitRequest, CommitResult, Compression, DeleteResult, EnsureBody, EnsuredVolume,
            HostInfo, MAX_BATCH, ReleaseRequest, TransferRequest, TransferStatus, TransferTarget,
            UsageReport, VolumeQuery,
        },
        client::{AgentClient, AgentClientError, AgentClientOptions},
        identity::VolumeIdentity,
        ops::MAX_USAGE_BATCH,
        transfer::TicketClaims,
    },
    marathon::MarathonClient,
};

/// Agent discovery settings.
#[derive(Debug, Clone)]
pub struct AgentDiscovery {
    /// HOST → base URL, from `--agent`.
    pub fixed: BTreeMap<String, String>,
    /// Marathon app whose tasks are agents, from `--agent-app`.
    pub app: Option<String>,
    pub scheme: String,
    pub port: u16,
}

impl AgentDiscovery {
    /// The base URL of the agent on `host`, given the hosts where the agent app runs.
    pub fn url(&self, host: &str, app_hosts: &[String]) -> Option<String> {
        if let Some(url) = self.fixed.get(host) {
            return Some(url.clone());
        }
        app_hosts
            .iter()
            .any(|h| h == host)
            .then(|| format!("{}://{}:{}", self.scheme, host, self.port))
    }

    /// Every known agent host: the static list and the agent app's task hosts.
    pub fn hosts(&self, app_hosts: &[String]) -> Vec<String> {
        let mut hosts: Vec<String> = self
            .fixed
            .keys()
            .cloned()
            .chain(app_hosts.iter().cloned())
            .collect();
        hosts.sort();
        hosts.dedup();
        hosts
    }
}

/// How the controller authenticates to the agents.
#[derive(Clone)]
pub enum Credentials {
    /// One token for every agent.
    Shared(String),
    /// A secret from which each host's token is derived: a token stolen from a host works on
    /// that host only.
    PerHost(Vec<u8>),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Shared(_) => f.write_str("Credentials::Shared(<redacted>)"),
            Credentials::PerHost(_) => f.write_str("Credentials::PerHost(<redacted>)"),
        }
    }
}

impl Credentials {
    /// The token of the agent of `host`.
    pub fn token_for(&self, host: &str) -> String {
        match self {
            Credentials::Shared(t) => t.clone(),
            Credentials::PerHost(secret) => crate::agent::credentials::host_token(secret, host),
        }
    }

    /// The controller's secret (keys berth's seal on status records).
    pub fn secret(&self) -> &[u8] {
        match self {
            Credentials::Shared(t) => t.as_bytes(),
            Credentials::PerHost(s) => s,
        }
    }
}

/// How long the agent app's task list is reused before it is read again.
const APP_HOSTS_TTL: Duration = Duration::from_secs(30);
/// Requests in flight to one agent at most.
pub const PER_AGENT_IN_FLIGHT: usize = 8;

/// The agents: discovery, clients, and a bound on concurrent requests per agent.
pub struct AgentDirectory {
    discovery: AgentDiscovery,
    marathon: MarathonClient,
    credentials: Credentials,
    options: AgentClientOptions,
    metrics: Arc<Metrics>,
    clients: Mutex<BTreeMap<String, AgentClient>>,
    app_hosts: tokio::sync::Mutex<Option<(Instant, Vec<String>)>>,
    in_flight: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl AgentDirectory {
    pub fn new(
        discovery: AgentDiscovery,
        marathon: MarathonClient,
        credentials: Credentials,
        options: AgentClientOptions,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            discovery,
            marathon,
            credentials,
            options,
            metrics,
            clients: Mutex::default(),
            app_hosts: tokio::sync::Mutex::default(),
            in_flight: Mutex::default(),
        }
    }

    /// Hosts where the agent app runs (cached for a while; `refresh` reads them again).
    async fn app_hosts(&self, refresh: bool) -> Vec<String> {
        let Some(app) = &self.discovery.app else {
            return Vec::new();
        };
        let mut cached = self.app_hosts.lock().await;
        if let Some((at, hosts)) = cached.as_ref()
            && !refresh
            && at.elapsed() < APP_HOSTS_TTL
        {
            return hosts.clone();
        }
        match self.marathon.app_tasks(app).await {
            Ok(tasks) => {
                self.metrics.marathon("app_tasks", "200");
                let hosts: Vec<String> = tasks.into_iter().map(|t| t.host).collect();
                *cached = Some((Instant::now(), hosts.clone()));
                hosts
            }
            Err(e) => {
                self.metrics
                    .marathon("app_tasks", super::metrics::marathon_code(&e));
                warn!(app = %app, error = %e, "cannot list the agent app's tasks");
                cached.as_ref().map(|(_, h)| h.clone()).unwrap_or_default()
            }
        }
    }

    /// The URL of the agent of `host` (see [`AgentDirectory::client`]).
    async fn url_of(&self, host: &str) -> Result<String, Failure> {
        self.client(host).await.map(|c| c.base_url().to_owned())
    }

    /// The agent of `host`: the static list first, then the agent app's tasks (read again once
    /// when the host is not among them, in case the agent app just moved).
    async fn client(&self, host: &str) -> Result<AgentClient, Failure> {
        let mut url = self.discovery.url(host, &self.app_hosts(false).await);
        if url.is_none() && self.discovery.app.is_some() {
            url = self.discovery.url(host, &self.app_hosts(true).await);
        }
        let Some(url) = url else {
            return Err(Failure::new(
                super::failure::Kind::Unreachable,
                format!(
                    "no berth agent is known for host {host}; the platform team must run the agent there (agent app or --agent)"
                ),
            ));
        };
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(&url) {
            return Ok(c.clone());
        }
        let token = self.credentials.token_for(host);
        let c = AgentClient::new(&url, &token, &self.options).map_err(|e| Failure::agent(host, &e))?;
        clients.insert(url, c.clone());
        Ok(c)
    }

    fn limit(&self, host: &str) -> Arc<Semaphore> {
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(host.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(PER_AGENT_IN_FLIGHT)))
            .clone()
    }

    fn count<T>(&self, endpoint: &'static str, host: &str, r: &Result<T, AgentClientError>) {
        self.metrics.agent(endpoint, host, super::metrics::agent_code(r));
    }
}

impl AgentsApi for AgentDirectory {
    fn candidates(&self) -> BoxFuture<'_, Vec<Candidate>> {
        Box::pin(async move {
            let app_hosts = self.app_hosts(false).await;
            let hosts = self.discovery.hosts(&app_hosts);
            let probes = hosts.into_iter().map(|host| async move {
                let client = self.client(&host).await.ok()?;
                let _permit = self.limit(&host).acquire_owned().await.ok()?;
                let r = client.host_info().await;
                self.count("host_info", &host, &r);
                match r {
                    // An agent that calls itself by another name is misconfigured: the pin would
                    // send the app to a host whose data this agent does not hold.
                    Ok(info) if info.hostname != host => {
                        warn!(%host, reports = %info.hostname, "agent left out of placement: it reports another hostname; fix its --hostname");
                        None
                    }
                    Ok(info) => Some(Candidate {
                        host,
                        free_bytes: info.space.free_bytes,
                        total_bytes: info.space.total_bytes,
                        promised_bytes: 0,
                        room_bytes: info.space.free_bytes,
                        attributes: info.attributes,
                    }),
                    Err(e) => {
                        warn!(%host, error = %e.log_message(), "agent left out of placement");
                        None
                    }
                }
            });
            join_all(probes).await.into_iter().flatten().collect()
        })
    }

    fn ensure<'a>(
        &'a self,
        host: &'a str,
        reqs: &'a [EnsureBody],
    ) -> BoxFuture<'a, Result<Vec<Result<EnsuredVolume, Failure>>, Failure>> {
        Box::pin(async move {
            let client = self.client(host).await?;
            let _permit = self.limit(host).acquire_owned().await;
            let mut out = Vec::with_capacity(reqs.len());
            for chunk in reqs.chunks(MAX_BATCH) {
                let r = client.ensure_batch(chunk).await;
                self.count("ensure_batch", host, &r);
                match r {
                    Ok(results) => out.extend(results.into_iter().map(|r| match r {
                        BatchResult::Ok(answer) => Ok(*answer),
                        BatchResult::Error { status, error } => {
                            let e = AgentClientError::from_answer(status, error.code, error.message);
                            Err(Failure::agent(host, &e))
                        }
                    })),
                    // An agent from before the batch endpoint: one request per volume.
                    Err(AgentClientError::InvalidResponse { .. }) => {
                        for req in chunk {
                            let r = client.ensure_volume_with_capacity(req).await;
                            self.count("ensure_volume", host, &r);
                            out.push(r.map_err(|e| Failure::agent(host, &e)));
                        }
                    }
                    Err(e) => {
                        warn!(%host, url = %client.base_url(), error = %e.log_message(), "ensure failed");
                        return Err(Failure::agent(host, &e));
                    }
                }
            }
            Ok(out)
        })
    }

    fn usage<'a>(
        &'a self,
        host: &'a str,
        volumes: &'a [VolumeQuery],
    ) -> BoxFuture<'a, Result<Vec<UsageReport>, Failure>> {
        Box::pin(async move {
            let client = self.client(host).await?;
            let _permit = self.limit(host).acquire_owned().await;
            let mut out = Vec::with_capacity(volumes.len());
            for chunk in volumes.chunks(MAX_USAGE_BATCH) {
                let r = client.usage(chunk).await;
                self.count("usage", host, &r);
                match r {
                    Ok(answer) if answer.volumes.len() == chunk.len() => out.extend(answer.volumes),
                    Ok(answer) => {
                        let e = AgentClientError::InvalidResponse {
                            url: format!("{}/v1/usage", client.base_url()),
                            reason: format!("{} answers for {} volumes", answer.volumes.len(), chunk.len()),
                        };
                        return Err(Failure::agent(host, &e));
                    }
                    Err(e) => {
                        debug!(%host, error = %e.log_message(), "usage not measured");
                        return Err(Failure::agent(host, &e));
                    }
                }
            }
            Ok(out)
        })
    }

    fn host_info<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<HostInfo, Failure>> {
        Box::pin(async move {
            let client = self.client(host).await?;
            let _permit = self.limit(host).acquire_owned().await;
            let r = client.host_info().await;
            self.count("host_info", host, &r);
            r.map_err(|e| Failure::agent(host, &e))
        })
    }

    fn delete<'a>(&'a self, data: &'a DataRef) -> BoxFuture<'a, Result<DeleteResult, Failure>> {
        Box::pin(async move {
            let host = data.host.as_str();
            let client = self.client(host).await?;
            let _permit = self.limit(host).acquire_owned().await;
            let r = match identity_of(data) {
                Some(id) => client.delete_checked(&data.tenant, &data.host_path, &id).await,
                None => client.delete(&data.tenant, &data.host_path).await,
            };
            self.count("delete_volume", host, &r);
            r.map_err(|e| {
                warn!(%host, url = %client.base_url(), error = %e.log_message(), "delete failed");
                Failure::agent(host, &e)
            })
        })
    }

    fn release<'a>(&'a self, data: &'a DataRef) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move { self.release_answer(data).await.map(|_| ()) })
    }

    fn release_found<'a>(&'a self, data: &'a DataRef) -> BoxFuture<'a, Result<bool, Failure>> {
        Box::pin(self.release_answer(data))
    }

    fn start_transfer<'a>(
        &'a self,
        order: &'a TransferOrder,
    ) -> BoxFuture<'a, Result<TransferStatus, Failure>> {
        Box::pin(self.transfer(order))
    }

    fn transfer_status<'a>(
        &'a self,
        host: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<TransferStatus>, Failure>> {
        Box::pin(async move {
            let client = self.client(host).await?;
            let r = client.transfer_status(id).await;
            self.count("transfer_status", host, &r);
            r.map_err(|e| Failure::agent(host, &e))
        })
    }

    fn cancel_transfer<'a>(&'a self, host: &'a str, id: &'a str) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            let client = self.client(host).await?;
            let r = client.cancel_transfer(id).await;
            self.count("cancel_transfer", host, &r);
            r.map(|_| ()).map_err(|e| Failure::agent(host, &e))
        })
    }

    fn discard_incoming<'a>(
        &'a self,
        host: &'a str,
        id: &'a str,
        tenant: &'a str,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            let client = self.client(host).await?;
            let r = client.discard_incoming(id, tenant).await;
            self.count("discard_incoming", host, &r);
            r.map(|_| ()).map_err(|e| Failure::agent(host, &e))
        })
    }

    fn commit<'a>(
        &'a self,
        host: &'a str,
        id: &'a str,
        req: &'a CommitRequest,
    ) -> BoxFuture<'a, Result<CommitResult, Failure>> {
        Box::pin(async move {
            let client = self.client(host).await?;
            let _permit = self.limit(host).acquire_owned().await;
            let r = client.commit(id, req).await;
            self.count("commit", host, &r);
            r.map_err(|e| Failure::agent(host, &e))
        })
    }
}

impl AgentDirectory {
    async fn release_answer(&self, data: &DataRef) -> Result<bool, Failure> {
        let Some(identity) = identity_of(data) else {
            return Ok(false);
        };
        let host = data.host.as_str();
        let client = self.client(host).await?;
        let _permit = self.limit(host).acquire_owned().await;
        let req = ReleaseRequest {
            tenant: data.tenant.clone(),
            host_path: data.host_path.clone(),
            identity,
        };
        let r = client.release(&req).await;
        self.count("release_volume", host, &r);
        r.map(|answer| answer.existed)
            .map_err(|e| Failure::agent(host, &e))
    }

    async fn transfer(&self, order: &TransferOrder) -> Result<TransferStatus, Failure> {
        let identity = VolumeIdentity::parse(&order.identity).map_err(|_| {
            Failure::new(
                super::failure::Kind::Refused,
                format!("{:?} is not a volume identity", order.identity),
            )
        })?;
        let target_url = self.url_of(&order.to).await?;
        let claims = TicketClaims {
            transfer_id: order.id.clone(),
            pass: order.pass,
            tenant: order.tenant.clone(),
            host_path: order.host_path.clone(),
            identity: order.identity.clone(),
            expires_at: crate::agent::transfer::ticket::now_secs() + TICKET_VALIDITY.as_secs(),
        };
        let ticket =
            crate::agent::credentials::transfer_ticket(&self.credentials.token_for(&order.to), &claims);
        let req = TransferRequest {
            id: order.id.clone(),
            tenant: order.tenant.clone(),
            host_path: order.host_path.clone(),
            identity,
            pass: order.pass,
            full: false,
            compression: Compression::Auto,
            target: TransferTarget {
                url: target_url,
                ticket,
            },
        };
        let host = order.from.as_str();
        let client = self.client(host).await?;
        let _permit = self.limit(host).acquire_owned().await;
        let r = client.start_transfer(&req).await;
        self.count("start_transfer", host, &r);
        r.map_err(|e| Failure::agent(host, &e))
    }
}

/// How long a transfer ticket is valid: it only has to start one pass.
const TICKET_VALIDITY: Duration = Duration::from_secs(3600);

/// The identity a data reference names, when it is a valid one.
fn identity_of(data: &DataRef) -> Option<VolumeIdentity> {
    VolumeIdentity::parse(data.identity.as_deref()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_agents_win_and_app_agents_get_scheme_and_port() {
        let d = AgentDiscovery {
            fixed: [("node-1".to_owned(), "http://127.0.0.1:9000".to_owned())].into(),
            app: Some("/berth/agent".into()),
            scheme: "https".into(),
            port: 8443,
        };
        let app_hosts = vec!["node-2".to_owned(), "node-1".to_owned()];
        assert_eq!(
            d.url("node-1", &app_hosts).as_deref(),
            Some("http://127.0.0.1:9000")
        );
        assert_eq!(
            d.url("node-2", &app_hosts).as_deref(),
            Some("https://node-2:8443")
        );
        assert_eq!(d.url("node-3", &app_hosts), None);
        assert_eq!(d.hosts(&app_hosts), ["node-1", "node-2"]);
    }
}
