//! Where the agents are: a static list from flags and/or the tasks of the agent's own Marathon
//! app, one client per host, all sharing the token.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use futures::future::join_all;

use super::placement::Candidate;
use crate::agent::client::{AgentClient, AgentClientError, AgentClientOptions};

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

/// Clients for the agents, built once per URL.
pub struct Agents {
    discovery: AgentDiscovery,
    token: String,
    options: AgentClientOptions,
    clients: Mutex<BTreeMap<String, AgentClient>>,
}

impl Agents {
    pub fn new(discovery: AgentDiscovery, token: String, options: AgentClientOptions) -> Self {
        Self {
            discovery,
            token,
            options,
            clients: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn discovery(&self) -> &AgentDiscovery {
        &self.discovery
    }

    /// The client for the agent at `url`.
    pub fn client(&self, url: &str) -> Result<AgentClient, AgentClientError> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(url) {
            return Ok(c.clone());
        }
        let c = AgentClient::new(url, &self.token, &self.options)?;
        clients.insert(url.to_owned(), c.clone());
        Ok(c)
    }

    /// Free space of every reachable agent, for placement. Unreachable agents are left out (and
    /// logged): a host that cannot answer cannot receive new data.
    pub async fn candidates(self: &Arc<Self>, app_hosts: &[String]) -> Vec<Candidate> {
        let hosts = self.discovery.hosts(app_hosts);
        let probes = hosts.into_iter().filter_map(|host| {
            let url = self.discovery.url(&host, app_hosts)?;
            let client = self.client(&url).ok()?;
            Some(async move {
                match client.host_info().await {
                    // An agent that calls itself by another name is misconfigured: the pin would
                    // send the app to a host whose data this agent does not hold.
                    Ok(info) if info.hostname != host => {
                        tracing::warn!(%host, reports = %info.hostname, "agent left out of placement: it reports another hostname; fix its --hostname");
                        None
                    }
                    Ok(info) => Some(Candidate {
                        host,
                        free_bytes: info.space.free_bytes,
                        attributes: info.attributes,
                    }),
                    Err(e) => {
                        tracing::warn!(%host, error = %e, "agent left out of placement");
                        None
                    }
                }
            })
        });
        join_all(probes).await.into_iter().flatten().collect()
    }
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
