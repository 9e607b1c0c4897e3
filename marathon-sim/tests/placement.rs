//! Placement honours every constraint operator exactly as Marathon's `Constraints` does.
mod common;

use common::{Sim, docker_app};
use marathon_sim::AgentConfig;
use serde_json::{Value, json};

async fn cluster() -> Sim {
    Sim::start(vec![
        AgentConfig::new("srv1.example.com")
            .attribute("rack", "r1")
            .attribute("ssd", "true"),
        AgentConfig::new("srv2.example.com").attribute("rack", "r1"),
        AgentConfig::new("srv3.example.com").attribute("rack", "r2"),
    ])
    .await
}

/// Posts an app and returns the hosts of the tasks placed once the scheduler has tried.
async fn place(sim: &Sim, id: &str, instances: u32, constraints: Value) -> Vec<String> {
    let mut app = docker_app(id, instances);
    app["constraints"] = constraints;
    let reply = sim.post("/v2/apps", app).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    // Wait until this app's deployment finished or the queue reports launches it cannot place.
    sim.wait_for("placement to settle", |s| async move {
        let app = s.app(id).await;
        let idle = app["deployments"].as_array().is_some_and(|d| d.is_empty());
        let queue = s.get("/v2/queue").await.body;
        let queued = queue["queue"]
            .as_array()
            .is_some_and(|q| q.iter().any(|e| e["app"]["id"] == id));
        (idle || queued) && app["tasksStaged"] == 0
    })
    .await;
    sim.task_hosts(id).await
}

#[tokio::test]
async fn like_is_a_full_string_match() {
    let sim = cluster().await;
    assert!(
        place(&sim, "/a", 1, json!([["hostname", "LIKE", "srv2"]]))
            .await
            .is_empty()
    );
    assert_eq!(
        place(&sim, "/b", 1, json!([["hostname", "LIKE", "srv2.*"]])).await,
        ["srv2.example.com"]
    );
    assert_eq!(
        place(
            &sim,
            "/c",
            1,
            json!([["hostname", "LIKE", "srv3\\.example\\.com"]])
        )
        .await,
        ["srv3.example.com"]
    );
}

#[tokio::test]
async fn unlike_is_a_full_string_match_too() {
    let sim = cluster().await;
    // "srv1" matches no hostname fully, so UNLIKE srv1 excludes nothing.
    assert_eq!(
        place(
            &sim,
            "/a",
            3,
            json!([["hostname", "UNLIKE", "srv1"], ["hostname", "UNIQUE"]])
        )
        .await
        .len(),
        3
    );
    let hosts = place(
        &sim,
        "/b",
        2,
        json!([["hostname", "UNLIKE", "srv1.*"], ["hostname", "UNIQUE"]]),
    )
    .await;
    assert_eq!(hosts, ["srv2.example.com", "srv3.example.com"]);
}

#[tokio::test]
async fn cluster_with_value_is_exact_equality() {
    let sim = cluster().await;
    assert_eq!(
        place(
            &sim,
            "/a",
            2,
            json!([["hostname", "CLUSTER", "srv3.example.com"]])
        )
        .await,
        ["srv3.example.com", "srv3.example.com"]
    );
    assert!(
        place(&sim, "/b", 1, json!([["hostname", "CLUSTER", "srv3"]]))
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn cluster_without_value_follows_the_first_instance() {
    let sim = cluster().await;
    let hosts = place(&sim, "/a", 3, json!([["rack", "CLUSTER", ""]])).await;
    assert_eq!(hosts.len(), 3);
    let racks: Vec<&str> = hosts
        .iter()
        .map(|h| if h.starts_with("srv3") { "r2" } else { "r1" })
        .collect();
    assert!(racks.iter().all(|r| *r == racks[0]), "{hosts:?}");
}

#[tokio::test]
async fn unique_allows_one_instance_per_value() {
    let sim = cluster().await;
    let hosts = place(&sim, "/a", 3, json!([["rack", "UNIQUE"]])).await;
    assert_eq!(hosts.len(), 2, "only two racks: {hosts:?}");
    let queue = sim.get("/v2/queue").await.body;
    assert_eq!(queue["queue"][0]["count"], 1);
}

#[tokio::test]
async fn group_by_spreads_over_values() {
    let sim = cluster().await;
    let hosts = place(&sim, "/a", 2, json!([["rack", "GROUP_BY", "2"]])).await;
    assert!(
        hosts.contains(&"srv3.example.com".to_string()),
        "one instance per rack: {hosts:?}"
    );
}

#[tokio::test]
async fn max_per_limits_instances_per_value() {
    let sim = cluster().await;
    let hosts = place(&sim, "/a", 4, json!([["rack", "MAX_PER", "1"]])).await;
    assert_eq!(hosts.len(), 2);
    let hosts = place(&sim, "/b", 3, json!([["hostname", "MAX_PER", "1"]])).await;
    assert_eq!(hosts.len(), 3);
}

#[tokio::test]
async fn is_matches_exactly() {
    let sim = cluster().await;
    assert_eq!(
        place(&sim, "/a", 1, json!([["rack", "IS", "r2"]])).await,
        ["srv3.example.com"]
    );
}

#[tokio::test]
async fn missing_attribute_satisfies_only_unlike() {
    let sim = cluster().await;
    // Only srv1 has "ssd": UNLIKE accepts the others, every other operator rejects them.
    let hosts = place(
        &sim,
        "/a",
        3,
        json!([["ssd", "UNLIKE", "true"], ["hostname", "UNIQUE"]]),
    )
    .await;
    assert_eq!(hosts, ["srv2.example.com", "srv3.example.com"]);
    assert_eq!(
        place(&sim, "/b", 1, json!([["ssd", "LIKE", ".*"]])).await,
        ["srv1.example.com"]
    );
    assert_eq!(
        place(&sim, "/c", 1, json!([["ssd", "CLUSTER", ""]])).await,
        ["srv1.example.com"]
    );
}

#[tokio::test]
async fn disk_is_a_resource_offers_must_have() {
    let sim = Sim::start(vec![
        AgentConfig::new("small").disk_mb(100.0),
        AgentConfig::new("big").disk_mb(5000.0),
    ])
    .await;
    let mut app = docker_app("/a", 1);
    app["disk"] = json!(1000);
    sim.create(app).await;
    assert_eq!(sim.task_hosts("/a").await, ["big"]);
}
