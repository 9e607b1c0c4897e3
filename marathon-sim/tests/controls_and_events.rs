//! Test controls (agents, task failures, faults, request log) and the `/v2/events` stream.
mod common;

use std::time::Duration;

use common::{Sim, docker_app};
use futures::StreamExt;
use marathon_sim::AgentConfig;
use serde_json::{Value, json};

/// Docker's message when a host directory is mounted onto a file (runc 1.1 generation).
const NOT_A_DIRECTORY: &str = "failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: error during container init: error mounting \"/containerdata/user-toto/etc/localtime\" to rootfs at \"/etc/localtime\": mount /containerdata/user-toto/etc/localtime:/etc/localtime (via /proc/self/fd/6), flags: 0x5000: not a directory: unknown: Are you trying to mount a directory onto a file (or vice-versa)? Check if the specified host path exists and is the expected type";

#[tokio::test]
async fn agent_down_loses_tasks_which_return_only_where_constraints_allow() {
    let sim = Sim::hosts(&["node-1", "node-2"]).await;
    let mut pinned = docker_app("/pinned", 1);
    pinned["constraints"] = json!([["hostname", "CLUSTER", "node-1"]]);
    sim.create(pinned).await;
    sim.create(docker_app("/free", 2)).await;
    assert_eq!(sim.task_hosts("/free").await, ["node-1", "node-2"]);
    sim.call("POST", "/_sim/agents/node-1/down", None).await;
    sim.wait_for("free app to move", |s| async move {
        s.app("/free").await["tasksRunning"] == 2
    })
    .await;
    assert_eq!(sim.task_hosts("/free").await, ["node-2", "node-2"]);
    assert!(
        sim.task_hosts("/pinned").await.is_empty(),
        "the pinned app waits for its host"
    );
    sim.call("POST", "/_sim/agents/node-1/up", None).await;
    sim.wait_for("pinned app back", |s| async move {
        s.app("/pinned").await["tasksRunning"] == 1
    })
    .await;
    assert_eq!(sim.task_hosts("/pinned").await, ["node-1"]);
}

#[tokio::test]
async fn failed_task_sets_last_task_failure() {
    let sim = Sim::hosts(&["node-1"]).await;
    let app = sim.create(docker_app("/web", 1)).await;
    let task_id = app["tasks"][0]["id"].as_str().unwrap().to_string();
    let reply = sim
        .post(
            &format!("/_sim/tasks/{task_id}/fail"),
            json!({ "message": NOT_A_DIRECTORY }),
        )
        .await;
    assert_eq!(reply.status, 204);
    let failure = sim.app("/web").await["lastTaskFailure"].clone();
    assert_eq!(failure["message"], NOT_A_DIRECTORY);
    assert_eq!(failure["state"], "TASK_FAILED");
    assert_eq!(failure["taskId"], task_id.as_str());
    assert_eq!(failure["host"], "node-1");
    assert_eq!(failure["appId"], "/web");
}

#[tokio::test]
async fn injected_faults_hit_the_next_requests_only() {
    let sim = Sim::hosts(&["node-1"]).await;
    sim.post("/_sim/faults", json!({ "count": 2, "status": 503 }))
        .await;
    assert_eq!(sim.get("/v2/apps").await.status, 503);
    assert_eq!(sim.get("/v2/apps").await.status, 503);
    assert_eq!(sim.get("/v2/apps").await.status, 200);
    sim.post("/_sim/faults", json!({ "count": 1, "latencyMs": 50 }))
        .await;
    assert_eq!(
        sim.get("/v2/apps").await.status,
        200,
        "latency alone still answers"
    );
}

#[tokio::test]
async fn request_log_records_method_path_query_and_body() {
    let sim = Sim::hosts(&["node-1"]).await;
    sim.call("DELETE", "/_sim/requests", None).await;
    sim.put("/v2/apps/web?force=false", json!({ "instances": 0 }))
        .await;
    let log = sim.get("/_sim/requests").await.body;
    let first = &log["requests"][0];
    assert_eq!(first["method"], "PUT");
    assert_eq!(first["path"], "/v2/apps/web");
    assert_eq!(first["query"], "force=false");
    assert_eq!(
        serde_json::from_str::<Value>(first["body"].as_str().unwrap()).unwrap(),
        json!({ "instances": 0 })
    );
    assert_eq!(
        sim.handle.write_requests().len(),
        1,
        "controls and GETs are not writes"
    );
}

#[tokio::test]
async fn basic_auth_and_dcos_token_are_enforced_when_configured() {
    let sim = Sim::start_with(marathon_sim::Config {
        agents: vec![AgentConfig::new("node-1")],
        basic_auth: Some(("admin".into(), "s3cret".into())),
        dcos_token: Some("tok".into()),
        ..Default::default()
    })
    .await;
    let anonymous = sim.http.get(sim.url("/v2/apps")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let basic = sim
        .http
        .get(sim.url("/v2/apps"))
        .basic_auth("admin", Some("s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 200);
    let token = sim
        .http
        .get(sim.url("/v2/apps"))
        .header("Authorization", "token=tok")
        .send()
        .await
        .unwrap();
    assert_eq!(token.status(), 200);
}

/// Reads SSE frames `(event, data)` from a response until `count` arrived.
async fn frames(response: reqwest::Response, count: usize) -> Vec<(String, Value)> {
    let mut body = response.bytes_stream();
    let mut text = String::new();
    let mut out = Vec::new();
    while out.len() < count {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("a frame in time")
            .expect("stream open")
            .expect("chunk");
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let mut event = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if !event.is_empty() {
                out.push((event, serde_json::from_str(&data).expect("json data")));
            }
        }
    }
    out
}

#[tokio::test]
async fn event_stream_needs_the_accept_header() {
    let sim = Sim::hosts(&["node-1"]).await;
    assert_eq!(sim.get("/v2/events").await.status, 405);
}

/// Marathon's `event_type` filter applies to every event, `event_stream_attached` included
/// (`HttpEventSSEHandle`; Marathon's own test "events should be filtered"): a filtered stream
/// starts attached only when the filter names `event_stream_attached`.
#[tokio::test]
async fn the_filter_applies_to_every_event_the_attachment_included() {
    let sim = Sim::hosts(&["node-1"]).await;
    let open = |query: &'static str| {
        let request = sim
            .http
            .get(sim.url(&format!("/v2/events{query}")))
            .header("Accept", "text/event-stream");
        async move { request.send().await.unwrap() }
    };
    let filtered = open("?event_type=api_post_event&event_type=deployment_success").await;
    assert_eq!(filtered.status(), 200);
    assert!(
        filtered.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let unfiltered = open("").await;
    let asks_for_it = open("?event_type=event_stream_attached&event_type=api_post_event").await;
    let reply = sim.post("/v2/apps", docker_app("/web", 1)).await;
    let deployment_id = reply.headers["Marathon-Deployment-Id"]
        .to_str()
        .unwrap()
        .to_string();
    let got = frames(filtered, 2).await;
    assert_eq!(
        got[0].0, "api_post_event",
        "no event_stream_attached through the filter"
    );
    assert_eq!(got[0].1["eventType"], "api_post_event");
    assert_eq!(got[0].1["appDefinition"]["id"], "/web");
    assert_eq!(got[1].0, "deployment_success", "status updates are filtered out");
    assert_eq!(got[1].1["id"], deployment_id.as_str());
    let got = frames(unfiltered, 1).await;
    assert_eq!(got[0].0, "event_stream_attached");
    assert_eq!(got[0].1["eventType"], "event_stream_attached");
    let got = frames(asks_for_it, 2).await;
    assert_eq!(got[0].0, "event_stream_attached");
    assert_eq!(got[1].0, "api_post_event");
}

#[tokio::test]
async fn event_stream_reports_task_status_and_instance_changes() {
    let sim = Sim::hosts(&["node-1"]).await;
    let response = sim
        .http
        .get(sim.url("/v2/events?event_type=status_update_event&event_type=instance_changed_event"))
        .header("Accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    sim.post("/v2/apps", docker_app("/web", 1)).await;
    let got = frames(response, 2).await;
    assert_eq!(got[0].0, "status_update_event");
    assert_eq!(got[0].1["taskStatus"], "TASK_STAGING");
    assert_eq!(got[0].1["slaveId"], "node-1-S0");
    assert_eq!(got[1].0, "instance_changed_event");
    assert_eq!(got[1].1["condition"], "Staging");
    assert_eq!(got[1].1["agentId"], "node-1-S0");
}

#[tokio::test]
async fn an_event_stream_outage_refuses_new_streams_for_a_while() {
    let sim = Sim::hosts(&["node-1"]).await;
    sim.post("/_sim/events/outage", json!({"seconds": 0.5})).await;
    let refused = sim
        .http
        .get(sim.url("/v2/events"))
        .header("Accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let back = sim
        .http
        .get(sim.url("/v2/events"))
        .header("Accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(back.status(), 200);
}

#[tokio::test]
async fn dropping_streams_ends_open_connections() {
    let sim = Sim::hosts(&["node-1"]).await;
    let response = sim
        .http
        .get(sim.url("/v2/events"))
        .header("Accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("event_stream_attached"));
    sim.post("/_sim/events/drop", json!({})).await;
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = body.next().await {
            if chunk.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the stream ends after the drop");
}

#[tokio::test]
async fn a_non_leader_redirects_the_event_stream_to_the_leader() {
    let sim = Sim::start_with(marathon_sim::Config {
        agents: vec![AgentConfig::new("node-1")],
        events_leader: Some("http://leader.example:8080".into()),
        ..Default::default()
    })
    .await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let reply = no_redirects
        .get(sim.url("/v2/events?event_type=deployment_success"))
        .header("Accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 307);
    assert_eq!(
        reply.headers()["location"].to_str().unwrap(),
        "http://leader.example:8080/v2/events?event_type=deployment_success"
    );
}

/// A share of all requests fails, at random but reproducibly for a seed, and the log records
/// what each request was answered.
#[tokio::test]
async fn chaos_fails_a_share_of_requests_and_the_log_records_each_status() {
    let sim = Sim::hosts(&["node-1"]).await;
    sim.handle.chaos(0.3, 503, Duration::ZERO, 42);
    let mut failed = 0;
    for _ in 0..200 {
        if sim.get("/v2/apps").await.status == 503 {
            failed += 1;
        }
    }
    assert!((40..=80).contains(&failed), "about 30% of 200 fail: {failed}");
    let logged = sim.handle.requests();
    let logged_failures = logged
        .iter()
        .filter(|r| r.path == "/v2/apps" && r.status == 503)
        .count();
    assert_eq!(logged_failures, failed);
    sim.handle.chaos(0.0, 503, Duration::ZERO, 0);
    assert_eq!(sim.get("/v2/apps").await.status, 200);
}
