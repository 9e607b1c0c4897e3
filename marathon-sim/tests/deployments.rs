//! Deployments: locks, restarts following upgradeStrategy, scale-only and no-op updates,
//! versionInfo, rollback and cancel, and the launch queue for unsatisfiable constraints.
mod common;

use common::{Sim, docker_app};
use marathon_sim::{DeploymentKind, DeploymentOutcome};
use serde_json::{Value, json};

fn task_ids(app: &Value) -> Vec<String> {
    let mut ids: Vec<String> = app["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn pinned_nowhere(id: &str) -> Value {
    let mut app = docker_app(id, 1);
    app["constraints"] = json!([["hostname", "CLUSTER", "node-9"]]);
    app
}

#[tokio::test]
async fn a_running_deployment_locks_the_app_with_the_reference_body() {
    let sim = Sim::hosts(&["node-1"]).await;
    let created = sim.post("/v2/apps", pinned_nowhere("/web")).await;
    let deployment_id = created.body["deployments"][0]["id"].clone();
    let reply = sim.put("/v2/apps/web", json!({ "instances": 2 })).await;
    assert_eq!(reply.status, 409);
    assert_eq!(
        reply.body,
        json!({
            "message": "App is locked by one or more deployments. Override with the option '?force=true'. View details at '/v2/deployments/<DEPLOYMENT_ID>'.",
            "deployments": [{ "id": deployment_id }],
        })
    );
    // force=true cancels the holder and deploys.
    let forced = sim
        .put("/v2/apps/web?force=true", json!({ "constraints": [] }))
        .await;
    assert_eq!(forced.status, 200, "{}", forced.body);
    sim.wait_idle().await;
    let records = sim.handle.deployment_records();
    assert_eq!(records[0].outcome, DeploymentOutcome::Canceled);
    assert_eq!(sim.app("/web").await["tasksRunning"], 1);
}

#[tokio::test]
async fn unsatisfiable_constraint_never_finishes_and_shows_in_the_queue() {
    let sim = Sim::hosts(&["node-1", "node-2"]).await;
    sim.post("/v2/apps", pinned_nowhere("/web")).await;
    sim.wait_for("queue entry", |s| async move {
        !s.get("/v2/queue").await.body["queue"]
            .as_array()
            .unwrap()
            .is_empty()
    })
    .await;
    let queue = sim.get("/v2/queue").await.body;
    let entry = &queue["queue"][0];
    assert_eq!(entry["app"]["id"], "/web");
    assert_eq!(entry["count"], 1);
    let reasons = entry["processedOffersSummary"]["rejectSummaryLastOffers"]
        .as_array()
        .unwrap();
    let unfulfilled = reasons
        .iter()
        .find(|r| r["reason"] == "UnfulfilledConstraint")
        .unwrap();
    assert_eq!(unfulfilled["declined"], 2);
    let deployments = sim.get("/v2/deployments").await.body;
    assert_eq!(deployments.as_array().unwrap().len(), 1);
    assert_eq!(deployments[0]["affectedApps"], json!(["/web"]));
    assert_eq!(deployments[0]["currentActions"][0]["action"], "StartApplication");
}

#[tokio::test]
async fn config_change_restarts_every_task_and_updates_version_info() {
    let sim = Sim::hosts(&["node-1", "node-2"]).await;
    let before = sim.create(docker_app("/web", 2)).await;
    let reply = sim
        .put("/v2/apps/web", json!({ "labels": { "owner": "berth" } }))
        .await;
    assert_eq!(reply.status, 200);
    assert!(reply.headers.contains_key("Marathon-Deployment-Id"));
    sim.wait_idle().await;
    let after = sim.app("/web").await;
    assert!(
        task_ids(&after).iter().all(|id| !task_ids(&before).contains(id)),
        "every task replaced"
    );
    assert_eq!(after["tasks"].as_array().unwrap().len(), 2);
    assert_ne!(after["version"], before["version"]);
    assert_eq!(after["versionInfo"]["lastConfigChangeAt"], after["version"]);
    assert_eq!(after["versionInfo"]["lastScalingAt"], after["version"]);
    let records = sim.handle.deployment_records();
    assert_eq!(records.last().unwrap().kind, DeploymentKind::RestartApplication);
}

#[tokio::test]
async fn scale_only_change_keeps_tasks_and_config_version() {
    let sim = Sim::hosts(&["node-1"]).await;
    let before = sim.create(docker_app("/web", 1)).await;
    sim.put("/v2/apps/web", json!({ "instances": 2 })).await;
    sim.wait_idle().await;
    let after = sim.app("/web").await;
    assert!(
        task_ids(&after).contains(&task_ids(&before)[0]),
        "the old task keeps running"
    );
    assert_eq!(
        after["versionInfo"]["lastConfigChangeAt"],
        before["versionInfo"]["lastConfigChangeAt"]
    );
    assert_eq!(after["versionInfo"]["lastScalingAt"], after["version"]);
    assert_eq!(
        sim.handle.deployment_records().last().unwrap().kind,
        DeploymentKind::ScaleApplication
    );
}

#[tokio::test]
async fn no_op_put_returns_a_deployment_and_changes_nothing() {
    let sim = Sim::hosts(&["node-1"]).await;
    let mut app = docker_app("/web", 1);
    app["constraints"] = json!([["hostname", "LIKE", "node-.*"], ["hostname", "MAX_PER", "5"]]);
    let before = sim.create(app).await;
    // Same fields, constraints in another order: a set compare says nothing changed.
    let body = json!({
        "container": before["container"],
        "constraints": [["hostname", "MAX_PER", "5"], ["hostname", "LIKE", "node-.*"]],
    });
    let reply = sim.put("/v2/apps/web", body).await;
    assert_eq!(reply.status, 200);
    assert!(reply.body["deploymentId"].is_string());
    sim.wait_idle().await;
    let after = sim.app("/web").await;
    assert_eq!(after["version"], before["version"]);
    assert_eq!(after["versionInfo"], before["versionInfo"]);
    assert_eq!(task_ids(&after), task_ids(&before));
}

#[tokio::test]
async fn partial_update_replaces_top_level_fields_whole() {
    let sim = Sim::hosts(&["node-1"]).await;
    let mut app = docker_app("/web", 1);
    app["container"]["volumes"] = json!([{ "containerPath": "/a", "hostPath": "/a", "mode": "RO" }]);
    app["env"] = json!({ "KEEP": "1" });
    sim.create(app).await;
    sim.put(
        "/v2/apps/web",
        json!({ "container": { "type": "DOCKER", "docker": { "image": "nginx" } } }),
    )
    .await;
    sim.wait_idle().await;
    let after = sim.app("/web").await;
    assert!(
        after["container"].get("volumes").is_none(),
        "no deep merge: volumes are gone"
    );
    assert_eq!(after["env"], json!({ "KEEP": "1" }), "absent fields are kept");
    // partialUpdate=false: absent fields revert to defaults.
    sim.put(
        "/v2/apps/web?partialUpdate=false",
        json!({ "cmd": "sleep 5", "instances": 1 }),
    )
    .await;
    sim.wait_idle().await;
    assert_eq!(sim.app("/web").await["env"], json!({}));
}

async fn overlap_for(strategy: Value, instances: u32) -> bool {
    let sim = Sim::hosts(&["node-1", "node-2", "node-3"]).await;
    let mut app = docker_app("/web", instances);
    app["upgradeStrategy"] = strategy;
    sim.create(app).await;
    sim.put(
        "/v2/apps/web",
        json!({ "constraints": [["hostname", "LIKE", "node-[0-9]"]] }),
    )
    .await;
    sim.wait_idle().await;
    let after = sim.app("/web").await;
    assert_eq!(after["tasksRunning"], instances);
    let record = sim.handle.deployment_records().last().cloned().unwrap();
    assert_eq!(record.kind, DeploymentKind::RestartApplication);
    record.old_and_new_overlapped
}

#[tokio::test]
async fn default_strategy_starts_new_tasks_beside_old_ones() {
    assert!(
        overlap_for(
            json!({ "minimumHealthCapacity": 1.0, "maximumOverCapacity": 1.0 }),
            1
        )
        .await
    );
}

#[tokio::test]
async fn zero_zero_strategy_stops_old_tasks_before_new_ones_start() {
    assert!(!overlap_for(json!({ "minimumHealthCapacity": 0, "maximumOverCapacity": 0 }), 1).await);
    assert!(!overlap_for(json!({ "minimumHealthCapacity": 0, "maximumOverCapacity": 0 }), 3).await);
}

#[tokio::test]
async fn max_over_capacity_zero_alone_still_allows_one_extra_instance() {
    // ceil(1 × 1.0) == floor(1 × 1.0): Marathon adds one instance, so old and new overlap.
    assert!(
        overlap_for(
            json!({ "minimumHealthCapacity": 1.0, "maximumOverCapacity": 0 }),
            1
        )
        .await
    );
}

#[tokio::test]
async fn restart_endpoint_replaces_tasks_and_sets_last_config_change() {
    let sim = Sim::hosts(&["node-1"]).await;
    let before = sim.create(docker_app("/web", 1)).await;
    let reply = sim.post("/v2/apps/web/restart", json!({})).await;
    assert_eq!(reply.status, 200);
    sim.wait_idle().await;
    let after = sim.app("/web").await;
    assert_ne!(task_ids(&after), task_ids(&before));
    assert_eq!(after["versionInfo"]["lastConfigChangeAt"], after["version"]);
    assert_eq!(
        after["versionInfo"]["lastScalingAt"],
        before["versionInfo"]["lastScalingAt"]
    );
}

#[tokio::test]
async fn deleting_a_deployment_with_force_cancels_202_without_body() {
    let sim = Sim::hosts(&["node-1"]).await;
    let created = sim.post("/v2/apps", pinned_nowhere("/web")).await;
    let id = created.body["deployments"][0]["id"].as_str().unwrap().to_string();
    let reply = sim
        .call("DELETE", &format!("/v2/deployments/{id}?force=true"), None)
        .await;
    assert_eq!(reply.status, 202);
    assert_eq!(reply.body, json!(""));
    assert_eq!(sim.get("/v2/deployments").await.body, json!([]));
    assert_eq!(
        sim.get("/v2/apps/web").await.status,
        200,
        "a cancel leaves the app as it is"
    );
}

#[tokio::test]
async fn deleting_a_deployment_without_force_rolls_back_200() {
    let sim = Sim::hosts(&["node-1"]).await;
    sim.create(docker_app("/web", 1)).await;
    let reply = sim
        .put(
            "/v2/apps/web",
            json!({ "constraints": [["hostname", "CLUSTER", "node-9"]] }),
        )
        .await;
    let id = reply.body["deploymentId"].as_str().unwrap().to_string();
    let rollback = sim.call("DELETE", &format!("/v2/deployments/{id}"), None).await;
    assert_eq!(rollback.status, 200);
    assert!(rollback.body["deploymentId"].is_string());
    assert_ne!(rollback.body["deploymentId"], id.as_str());
    sim.wait_idle().await;
    assert_eq!(sim.app("/web").await["constraints"], json!([]));
    let unknown = sim.call("DELETE", "/v2/deployments/nope", None).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(
        unknown.body,
        json!({ "message": "DeploymentPlan nope does not exist" })
    );
}

#[tokio::test]
async fn overlap_records_are_exposed_over_http() {
    let sim = Sim::hosts(&["node-1"]).await;
    let mut app = docker_app("/web", 1);
    app["upgradeStrategy"] = json!({ "minimumHealthCapacity": 0, "maximumOverCapacity": 0 });
    sim.create(app).await;
    let reply = sim.put("/v2/apps/web", json!({ "labels": { "x": "y" } })).await;
    sim.wait_idle().await;
    let records = sim.get("/_sim/deployments").await.body;
    let record = records["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == reply.body["deploymentId"])
        .cloned()
        .unwrap();
    assert_eq!(record["kind"], "RestartApplication");
    assert_eq!(record["outcome"], "succeeded");
    assert_eq!(record["oldAndNewOverlapped"], false);
    assert_eq!(record["maxTasksAlive"], 1);
}
