//! Shared helpers: a simulator plus a small JSON-over-HTTP client.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use marathon_sim::{AgentConfig, Config, SimHandle, Simulator};
use serde_json::{Value, json};

pub struct Sim {
    pub handle: SimHandle,
    pub http: reqwest::Client,
}

pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Sim {
    pub async fn start(agents: Vec<AgentConfig>) -> Sim {
        Self::start_with(Config {
            agents,
            step: Duration::from_millis(50),
            ..Config::default()
        })
        .await
    }

    pub async fn hosts(hosts: &[&str]) -> Sim {
        Self::start(hosts.iter().map(|h| AgentConfig::new(h)).collect()).await
    }

    pub async fn start_with(config: Config) -> Sim {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let handle = Simulator::start(config).await.expect("simulator starts");
        let http = reqwest::Client::builder().build().expect("client builds");
        Sim { handle, http }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.handle.url(), path)
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.http.request(method, self.url(path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request succeeds");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call("GET", path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.call("POST", path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Reply {
        self.call("PUT", path, Some(body)).await
    }

    pub async fn app(&self, id: &str) -> Value {
        let reply = self.get(&format!("/v2/apps{id}")).await;
        assert_eq!(reply.status, 200, "GET {id}: {}", reply.body);
        reply.body["app"].clone()
    }

    /// Creates an app and waits for its deployment to finish.
    pub async fn create(&self, app: Value) -> Value {
        let reply = self.post("/v2/apps", app).await;
        assert_eq!(reply.status, 201, "create: {}", reply.body);
        self.wait_idle().await;
        self.app(reply.body["id"].as_str().expect("id")).await
    }

    /// Waits until no deployment is running.
    pub async fn wait_idle(&self) {
        self.wait_for("deployments to finish", |sim| async move {
            sim.get("/v2/deployments")
                .await
                .body
                .as_array()
                .is_some_and(|d| d.is_empty())
        })
        .await;
    }

    pub async fn wait_for<'a, F, Fut>(&'a self, what: &str, mut check: F)
    where
        F: FnMut(&'a Sim) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if check(self).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("timed out waiting for {what}");
    }

    pub async fn task_hosts(&self, id: &str) -> Vec<String> {
        let mut hosts: Vec<String> = self.app(id).await["tasks"]
            .as_array()
            .expect("tasks")
            .iter()
            .map(|t| t["host"].as_str().expect("host").to_string())
            .collect();
        hosts.sort();
        hosts
    }
}

pub fn docker_app(id: &str, instances: u32) -> Value {
    json!({
        "id": id,
        "cmd": "sleep 1000",
        "instances": instances,
        "cpus": 0.1,
        "mem": 32,
        "container": { "type": "DOCKER", "docker": { "image": "busybox" } },
    })
}
