//! App endpoints: create, read, list, update, delete, and their error bodies.
mod common;

use common::{Sim, docker_app};
use serde_json::json;

#[tokio::test]
async fn post_creates_app_with_location_and_deployment_headers() {
    let sim = Sim::hosts(&["node-1"]).await;
    let reply = sim.post("/v2/apps", docker_app("prod/web", 1)).await;
    assert_eq!(reply.status, 201);
    assert_eq!(reply.body["id"], "/prod/web", "relative ids become absolute");
    let deployment_id = reply.headers["Marathon-Deployment-Id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(reply.body["deployments"], json!([{ "id": deployment_id }]));
    assert!(
        reply.headers["Location"]
            .to_str()
            .unwrap()
            .ends_with("/v2/apps/prod/web")
    );
}

#[tokio::test]
async fn post_of_existing_id_is_409_without_deployments() {
    let sim = Sim::hosts(&["node-1"]).await;
    sim.create(docker_app("/web", 1)).await;
    let reply = sim.post("/v2/apps", docker_app("/web", 1)).await;
    assert_eq!(reply.status, 409);
    assert_eq!(
        reply.body,
        json!({ "message": "An app with id [/web] already exists." })
    );
}

#[tokio::test]
async fn unknown_app_is_404_with_marathon_message() {
    let sim = Sim::hosts(&["node-1"]).await;
    let reply = sim.get("/v2/apps/x").await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.body, json!({ "message": "App '/x' does not exist" }));
    let patch = sim
        .call("PATCH", "/v2/apps/x", Some(json!({ "instances": 2 })))
        .await;
    assert_eq!(patch.status, 404, "PATCH never creates");
}

#[tokio::test]
async fn single_app_get_always_embeds_tasks_counts_and_deployments() {
    let sim = Sim::hosts(&["node-1"]).await;
    let app = sim.create(docker_app("/web", 2)).await;
    let tasks = app["tasks"].as_array().expect("tasks embedded");
    assert_eq!(tasks.len(), 2);
    assert_eq!(tasks[0]["host"], "node-1");
    assert_eq!(tasks[0]["slaveId"], "node-1-S0");
    assert_eq!(tasks[0]["state"], "TASK_RUNNING");
    assert_eq!(app["tasksRunning"], 2);
    assert_eq!(app["deployments"], json!([]));
    // The list does not embed tasks unless asked.
    let list = sim.get("/v2/apps").await.body;
    assert!(list["apps"][0].get("tasks").is_none());
    let list = sim.get("/v2/apps?embed=apps.tasks").await.body;
    assert_eq!(list["apps"][0]["tasks"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn apps_are_listed_by_group_and_id_substring() {
    let sim = Sim::hosts(&["node-1"]).await;
    for id in ["/toto/web", "/toto/db", "/titi/web"] {
        sim.post("/v2/apps", docker_app(id, 0)).await;
    }
    let ids = |body: &serde_json::Value| -> Vec<String> {
        body["apps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        ids(&sim.get("/v2/apps/toto/*").await.body),
        vec!["/toto/db", "/toto/web"]
    );
    assert_eq!(
        ids(&sim.get("/v2/apps?id=WEB").await.body),
        vec!["/titi/web", "/toto/web"]
    );
    let tasks = sim.get("/v2/apps/toto/web/tasks").await;
    assert_eq!(tasks.body, json!({ "tasks": [] }));
}

#[tokio::test]
async fn invalid_ids_are_rejected_with_422() {
    let sim = Sim::hosts(&["node-1"]).await;
    for bad in ["/Web", "/web-", "/a/tasks", "/a_b"] {
        let reply = sim.post("/v2/apps", docker_app(bad, 1)).await;
        assert_eq!(reply.status, 422, "{bad}: {}", reply.body);
        assert_eq!(reply.body["details"][0]["path"], "/id", "{bad}");
    }
}

#[tokio::test]
async fn put_creates_an_unknown_app_with_201() {
    let sim = Sim::hosts(&["node-1"]).await;
    let reply = sim.put("/v2/apps/new/app", docker_app("/ignored", 1)).await;
    assert_eq!(reply.status, 201);
    assert!(reply.body["deploymentId"].is_string());
    assert!(reply.body["version"].is_string());
    // The URL id wins over the body id.
    assert_eq!(sim.app("/new/app").await["id"], "/new/app");
}

#[tokio::test]
async fn unknown_input_fields_are_ignored_and_response_fields_not_stored() {
    let sim = Sim::hosts(&["node-1"]).await;
    let mut app = docker_app("/web", 1);
    app["notAMarathonField"] = json!(true);
    app["tasksRunning"] = json!(99);
    let created = sim.create(app).await;
    assert!(created.get("notAMarathonField").is_none());
    assert_eq!(created["tasksRunning"], 1);
}

#[tokio::test]
async fn malformed_json_is_400_invalid_json() {
    let sim = Sim::hosts(&["node-1"]).await;
    let reply = sim
        .http
        .post(sim.url("/v2/apps"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 400);
    let body: serde_json::Value = reply.json().await.unwrap();
    assert_eq!(body["message"], "Invalid JSON");
}

#[tokio::test]
async fn ping_info_and_leader() {
    let sim = Sim::hosts(&["node-1"]).await;
    let ping = sim.get("/ping").await;
    assert_eq!((ping.status, ping.body), (200, json!("pong")));
    let info = sim.get("/v2/info").await.body;
    assert_eq!(info["name"], "marathon");
    assert_eq!(info["version"], "1.10.26");
    assert_eq!(info["elected"], true);
    let leader = sim.get("/v2/leader").await.body;
    assert_eq!(leader["leader"], sim.handle.addr().to_string());
}

#[tokio::test]
async fn delete_app_kills_tasks_and_returns_deployment() {
    let sim = Sim::hosts(&["node-1"]).await;
    sim.create(docker_app("/web", 2)).await;
    let reply = sim.call("DELETE", "/v2/apps/web", None).await;
    assert_eq!(reply.status, 200);
    assert!(reply.body["deploymentId"].is_string());
    assert_eq!(sim.get("/v2/apps/web").await.status, 404);
    assert_eq!(
        sim.get("/_sim/agents").await.body["agents"][0]["tasks"],
        json!([])
    );
}

#[tokio::test]
async fn kill_task_relaunches_and_kill_with_scale_reduces_instances() {
    let sim = Sim::hosts(&["node-1"]).await;
    let app = sim.create(docker_app("/web", 2)).await;
    let victim = app["tasks"][0]["id"].as_str().unwrap().to_string();
    let reply = sim
        .call("DELETE", &format!("/v2/apps/web/tasks/{victim}"), None)
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["task"]["id"], victim.as_str());
    let victim_ref = &victim;
    sim.wait_for("replacement", |s| async move {
        let app = s.app("/web").await;
        app["tasksRunning"] == 2 && !app["tasks"].to_string().contains(victim_ref.as_str())
    })
    .await;
    let reply = sim.call("DELETE", "/v2/apps/web/tasks?scale=true", None).await;
    assert!(reply.body["deploymentId"].is_string(), "{}", reply.body);
    sim.wait_idle().await;
    assert_eq!(sim.app("/web").await["instances"], 0);
}
