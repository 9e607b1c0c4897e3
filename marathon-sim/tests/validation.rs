//! Marathon 1.5+ validation bodies for volumes, constraints, upgradeStrategy and rollbacks.
mod common;

use common::{Sim, docker_app};
use serde_json::{Value, json};

fn with_volumes(volumes: Value) -> Value {
    let mut app = docker_app("/web", 1);
    app["container"]["volumes"] = volumes;
    app
}

fn with_constraints(constraints: Value) -> Value {
    let mut app = docker_app("/web", 1);
    app["constraints"] = constraints;
    app
}

#[tokio::test]
async fn host_volume_without_mode_is_a_422_invalid_json_path_missing() {
    let sim = Sim::hosts(&["node-1"]).await;
    let reply = sim
        .post(
            "/v2/apps",
            with_volumes(json!([{ "containerPath": "/etc/a", "hostPath": "/var/a" }])),
        )
        .await;
    assert_eq!(reply.status, 422);
    assert_eq!(
        reply.body,
        json!({ "message": "Invalid JSON", "details": [{ "path": "/container/volumes(0)/mode", "errors": ["error.path.missing"] }] })
    );
}

#[tokio::test]
async fn host_volume_with_empty_host_path_is_not_valid() {
    let sim = Sim::hosts(&["node-1"]).await;
    let reply = sim
        .post(
            "/v2/apps",
            with_volumes(json!([{ "containerPath": "/etc/a", "hostPath": "", "mode": "RO" }])),
        )
        .await;
    assert_eq!(reply.status, 422);
    assert_eq!(reply.body["message"], "Object is not valid");
    assert_eq!(reply.body["details"][0]["path"], "/container/volumes(0)/hostPath");
}

#[tokio::test]
async fn all_four_volume_kinds_are_accepted_and_returned_verbatim() {
    let sim = Sim::hosts(&["node-1"]).await;
    let volumes = json!([
        { "containerPath": "/etc/a", "hostPath": "/var/a", "mode": "RO" },
        { "containerPath": "data", "mode": "RW", "persistent": { "size": 10 } },
        { "containerPath": "ext", "mode": "RW", "external": { "name": "v", "provider": "dvdi", "options": {} } },
        { "containerPath": "secret", "secret": "s1" },
    ]);
    let app = sim.create(with_volumes(volumes.clone())).await;
    assert_eq!(app["container"]["volumes"], volumes);
}

#[tokio::test]
async fn constraint_messages_match_marathon() {
    let sim = Sim::hosts(&["node-1"]).await;
    let cases = [
        (
            json!(["hostname"]),
            "Each constraint must have either 2 or 3 fields",
        ),
        (
            json!(["hostname", "LIKE", "a", "b"]),
            "Each constraint must have either 2 or 3 fields",
        ),
        (json!(["", "UNIQUE"]), "illegal constraint specification"),
        (
            json!(["hostname", "NEAR"]),
            "operator must be one of the following UNIQUE, CLUSTER, GROUP_BY, LIKE, MAX_PER, UNLIKE or IS",
        ),
        (
            json!(["hostname", "UNIQUE", ""]),
            "UNIQUE does not accept a value",
        ),
        (
            json!(["hostname", "MAX_PER", "two"]),
            "MAX_PER requires an integer value",
        ),
        (
            json!(["hostname", "LIKE"]),
            "LIKE and UNLIKE require a non-empty, regular expression value",
        ),
        (
            json!(["hostname", "UNLIKE", ""]),
            "LIKE and UNLIKE require a non-empty, regular expression value",
        ),
    ];
    for (constraint, message) in cases {
        let reply = sim.post("/v2/apps", with_constraints(json!([constraint]))).await;
        assert_eq!(reply.status, 422, "{constraint}");
        assert_eq!(reply.body["message"], "Object is not valid");
        assert_eq!(
            reply.body["details"][0]["errors"],
            json!([message]),
            "{constraint}"
        );
    }
    let reply = sim
        .post(
            "/v2/apps",
            with_constraints(json!([["hostname", "LIKE", "web-[0-9"]])),
        )
        .await;
    assert_eq!(reply.status, 422);
    assert!(
        reply.body["details"][0]["errors"][0]
            .as_str()
            .unwrap()
            .ends_with("is not a valid regular expression")
    );
}

#[tokio::test]
async fn valid_constraints_are_stored_as_a_set() {
    let sim = Sim::hosts(&["node-1"]).await;
    let reply = sim
        .post(
            "/v2/apps",
            with_constraints(json!([
                ["hostname", "CLUSTER", ""],
                ["hostname", "CLUSTER", ""],
                ["rack", "GROUP_BY"],
            ])),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let app = sim.app("/web").await;
    // Duplicates collapse; the empty CLUSTER value is kept.
    assert_eq!(
        app["constraints"],
        json!([["hostname", "CLUSTER", ""], ["rack", "GROUP_BY"]])
    );
}

#[tokio::test]
async fn upgrade_strategy_out_of_range_is_the_reference_body() {
    let sim = Sim::hosts(&["node-1"]).await;
    let mut app = docker_app("/web", 1);
    app["upgradeStrategy"] = json!({ "minimumHealthCapacity": 1.5, "maximumOverCapacity": 0 });
    let reply = sim.post("/v2/apps", app).await;
    assert_eq!(reply.status, 422);
    assert_eq!(
        reply.body,
        json!({"message":"Object is not valid","details":[{"path":"/upgradeStrategy/minimumHealthCapacity","errors":["is greater than 1"]}]})
    );
}

#[tokio::test]
async fn version_in_a_partial_update_may_only_come_with_id() {
    let sim = Sim::hosts(&["node-1"]).await;
    let app = sim.create(docker_app("/web", 1)).await;
    let mut body = app.clone();
    body["instances"] = json!(2);
    let reply = sim.put("/v2/apps/web", body).await;
    assert_eq!(reply.status, 422);
    assert_eq!(
        reply.body["details"][0]["errors"],
        json!(["The 'version' field may only be combined with the 'id' field."])
    );
    assert_eq!(sim.write_count_to("/v2/apps/web").await, 1);
}

#[tokio::test]
async fn version_alone_rolls_back_to_that_stored_version() {
    let sim = Sim::hosts(&["node-1"]).await;
    let first = sim.create(docker_app("/web", 1)).await;
    sim.put("/v2/apps/web", json!({ "labels": { "a": "b" } })).await;
    sim.wait_idle().await;
    assert_eq!(sim.app("/web").await["labels"], json!({ "a": "b" }));
    let reply = sim
        .put(
            "/v2/apps/web",
            json!({ "id": "/web", "version": first["version"] }),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    sim.wait_idle().await;
    let rolled_back = sim.app("/web").await;
    assert_eq!(rolled_back["labels"], json!({}));
    assert_ne!(
        rolled_back["version"], first["version"],
        "a rollback is a new version"
    );
    let versions = sim.get("/v2/apps/web/versions").await.body;
    assert_eq!(versions["versions"].as_array().map(Vec::len), Some(3));
    assert_eq!(versions["versions"][0], rolled_back["version"], "newest first");
    let stored = sim
        .get(&format!(
            "/v2/apps/web/versions/{}",
            first["version"].as_str().unwrap()
        ))
        .await;
    assert_eq!(stored.body["labels"], json!({}));
}

#[tokio::test]
async fn lower_case_operator_passes_validation_but_fails_conversion() {
    let sim = Sim::hosts(&["node-1"]).await;
    let reply = sim
        .post("/v2/apps", with_constraints(json!([["hostname", "unique"]])))
        .await;
    assert_eq!(reply.status, 422);
    assert!(
        reply.body.get("details").is_none(),
        "a bare IllegalArgumentException: {}",
        reply.body
    );
}

trait WriteCount {
    async fn write_count_to(&self, path: &str) -> usize;
}

impl WriteCount for Sim {
    async fn write_count_to(&self, path: &str) -> usize {
        self.handle
            .write_requests()
            .iter()
            .filter(|r| r.path == path)
            .count()
    }
}
