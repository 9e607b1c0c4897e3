//! The Marathon client against the simulator: every call and its error cases.

use std::time::Duration;

use berth::marathon::{
    App, AppUpdate, Constraint, Constraints, HostVolume, MarathonClient, MarathonConfig, MarathonError,
    UpgradeStrategy, Volume, VolumeMode,
};
use marathon_sim::{AgentConfig, Config, SimHandle, Simulator};
use serde_json::{Value, json};

async fn sim(hosts: &[&str]) -> SimHandle {
    Simulator::start(Config {
        agents: hosts.iter().map(|h| AgentConfig::new(h)).collect(),
        step: Duration::from_millis(50),
        ..Config::default()
    })
    .await
    .expect("simulator starts")
}

fn client(sim: &SimHandle) -> MarathonClient {
    berth::tls::install_crypto_provider();
    MarathonClient::new(MarathonConfig::new([sim.url()])).expect("client builds")
}

/// Polls `/v2/deployments` until `id` is gone (finished deployments vanish).
async fn wait_gone(client: &MarathonClient, id: &str) {
    for _ in 0..750 {
        if !client
            .deployments()
            .await
            .expect("deployments")
            .iter()
            .any(|d| d.id == id)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("deployment {id} did not finish");
}

async fn wait_idle(client: &MarathonClient) {
    for _ in 0..500 {
        if client.deployments().await.expect("deployments").is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("deployments did not finish");
}

/// A user's app with settings berth does not own, at every level berth reads.
fn users_app() -> Value {
    json!({
        "id": "/toto/web",
        "cmd": "nginx -g 'daemon off;'",
        "instances": 1,
        "cpus": 0.1,
        "mem": 64,
        "env": { "MODE": "prod" },
        "healthChecks": [{ "protocol": "MESOS_HTTP", "path": "/health", "portIndex": 0 }],
        "labels": { "team": "toto" },
        "constraints": [["hostname", "LIKE", "node-.*"]],
        "container": {
            "type": "DOCKER",
            "docker": { "image": "nginx:1.25", "forcePullImage": true, "parameters": [{ "key": "user", "value": "1000" }] },
            "portMappings": [{ "containerPort": 80, "hostPort": 0, "protocol": "tcp", "name": "http" }],
            "volumes": [{ "containerPath": "/cache", "hostPath": "/tmp/cache", "mode": "RW" }]
        },
        "upgradeStrategy": { "minimumHealthCapacity": 1, "maximumOverCapacity": 1 }
    })
}

async fn post_raw(sim: &SimHandle, app: Value) {
    berth::tls::install_crypto_provider();
    let reply = reqwest::Client::new()
        .post(format!("{}/v2/apps", sim.url()))
        .json(&app)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 201, "{}", reply.text().await.unwrap());
}

#[tokio::test]
async fn info_reports_the_marathon_version() {
    let sim = sim(&["node-1"]).await;
    let info = client(&sim).info().await.unwrap();
    assert_eq!(info.version, "1.10.26");
    assert_eq!(info.major_minor(), Some((1, 10)));
    assert!(info.has_1_5_networking());
}

#[tokio::test]
async fn get_app_has_tasks_and_last_task_failure() {
    let sim = sim(&["node-1"]).await;
    let client = client(&sim);
    post_raw(&sim, users_app()).await;
    wait_idle(&client).await;
    let app = client.get_app("toto/web").await.unwrap();
    assert_eq!(app.task_hosts(), ["node-1"]);
    assert!(app.last_task_failure.is_none());
    let task_id = app.tasks.as_ref().unwrap()[0].id.clone();
    let message = "error mounting \"/containerdata/user-toto/etc/localtime\" to rootfs at \"/etc/localtime\": not a directory: unknown: Are you trying to mount a directory onto a file (or vice-versa)?";
    assert!(sim.fail_task(&task_id, message));
    let failure = client
        .get_app("/toto/web")
        .await
        .unwrap()
        .last_task_failure
        .expect("failure recorded");
    assert_eq!(failure.task_id, task_id);
    assert_eq!(failure.host, "node-1");
    assert!(failure.message.contains("not a directory"), "{}", failure.message);
}

#[tokio::test]
async fn unknown_app_is_not_found() {
    let sim = sim(&["node-1"]).await;
    match client(&sim).get_app("/nope").await {
        Err(MarathonError::NotFound { message }) => assert_eq!(message, "App '/nope' does not exist"),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

#[tokio::test]
async fn apps_are_listed_by_group_with_tasks_and_tasks_by_app() {
    let sim = sim(&["node-1"]).await;
    let client = client(&sim);
    for id in ["/toto/web", "/toto/db", "/titi/web"] {
        client.create_app(&App::docker(id, "busybox", 1)).await.unwrap();
    }
    wait_idle(&client).await;
    let mut ids: Vec<String> = client
        .list_apps("/toto")
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.id)
        .collect();
    ids.sort();
    assert_eq!(ids, ["/toto/db", "/toto/web"]);
    assert_eq!(client.list_apps("/").await.unwrap().len(), 3);
    let listed = client.list_apps("toto").await.unwrap();
    assert!(
        listed
            .iter()
            .all(|a| a.tasks.as_ref().is_some_and(|t| t.len() == 1))
    );
    let tasks = client.app_tasks("/titi/web").await.unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].host, "node-1");
    assert_eq!(tasks[0].slave_id.as_deref(), Some("node-1-S0"));
}

#[tokio::test]
async fn create_of_an_existing_app_is_a_conflict() {
    let sim = sim(&["node-1"]).await;
    let client = client(&sim);
    client.create_app(&App::docker("/a", "busybox", 0)).await.unwrap();
    match client.create_app(&App::docker("/a", "busybox", 0)).await {
        Err(MarathonError::Conflict { message }) => {
            assert_eq!(message, "An app with id [/a] already exists.")
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
}

#[tokio::test]
async fn pinning_sends_only_owned_fields_and_preserves_everything_else() {
    let sim = sim(&["node-1", "node-2"]).await;
    let client = client(&sim);
    post_raw(&sim, users_app()).await;
    wait_idle(&client).await;
    let current = client.get_app("/toto/web").await.unwrap();
    let host = current.task_hosts()[0].to_string();

    let mut desired = current.clone();
    let container = desired.container.as_mut().unwrap();
    container
        .volumes
        .as_mut()
        .unwrap()
        .push(Volume::Host(HostVolume::new(
            "/etc/localtime",
            "/containerdata/user-toto/etc/localtime",
            VolumeMode::ReadOnly,
        )));
    desired.constraints = Some(
        current
            .constraints
            .clone()
            .unwrap_or_default()
            .with_pin(Constraint::hostname_cluster(&host)),
    );
    desired.upgrade_strategy = Some(UpgradeStrategy::single_writer());
    let update = AppUpdate::between(&current, &desired).expect("a change");
    sim.clear_requests();
    let result = client.update_app("/toto/web", &update, false).await.unwrap();
    wait_gone(&client, &result.deployment_id).await;

    let writes = sim.write_requests();
    assert_eq!(writes.len(), 1, "one write per change");
    assert_eq!(writes[0].path, "/v2/apps/toto/web");
    assert!(!writes[0].query.contains("force"), "never forces unless asked");
    let body: Value = serde_json::from_str(&writes[0].body).unwrap();
    let mut keys: Vec<&str> = body.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        ["constraints", "container", "upgradeStrategy"],
        "no version, versionInfo or tasks"
    );
    assert_eq!(
        body["container"]["docker"]["parameters"],
        json!([{ "key": "user", "value": "1000" }])
    );
    assert_eq!(body["container"]["portMappings"][0]["name"], "http");

    let after = client.get_app("/toto/web").await.unwrap();
    let raw = serde_json::to_value(&after).unwrap();
    assert_eq!(raw["healthChecks"], users_app()["healthChecks"]);
    assert_eq!(raw["env"], json!({ "MODE": "prod" }));
    assert_eq!(raw["container"]["docker"]["forcePullImage"], true);
    assert_eq!(
        after.container.as_ref().unwrap().volumes.as_ref().unwrap().len(),
        2
    );
    assert_eq!(
        after.task_hosts(),
        [host.as_str()],
        "the new task runs where the data is"
    );
    assert_eq!(
        after.constraints.as_ref().unwrap().pinned_hosts(),
        std::slice::from_ref(&host)
    );

    // Steady state: nothing to write.
    assert_eq!(AppUpdate::between(&after, &desired), None);
    // The restart stopped the old task before starting the new one.
    let record = sim
        .deployment_records()
        .into_iter()
        .find(|r| r.id == result.deployment_id)
        .unwrap();
    assert!(!record.old_and_new_overlapped);
}

#[tokio::test]
async fn a_running_deployment_gives_locked_with_real_ids_and_force_overrides() {
    let sim = sim(&["node-1"]).await;
    let client = client(&sim);
    let mut app = App::docker("/toto/web", "busybox", 1);
    app.constraints = Some(Constraints::from_iter([Constraint::hostname_cluster("node-9")]));
    client.create_app(&app).await.unwrap();
    let holder = client.get_app("/toto/web").await.unwrap().deployments.unwrap()[0]
        .id
        .clone();
    let update = AppUpdate {
        constraints: Some(Constraints::from_iter([Constraint::hostname_cluster("node-1")])),
        ..AppUpdate::default()
    };
    match client.update_app("/toto/web", &update, false).await {
        Err(e @ MarathonError::Locked { .. }) => {
            assert!(e.to_string().contains(&holder), "{e}");
            let MarathonError::Locked { deployment_ids, .. } = e else {
                unreachable!()
            };
            assert_eq!(deployment_ids, std::slice::from_ref(&holder));
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    assert!(
        client.deployments().await.unwrap().iter().any(|d| d.id == holder),
        "the holder is still running"
    );
    let forced = client.update_app("/toto/web", &update, true).await.unwrap();
    assert!(sim.write_requests().last().unwrap().query.contains("force=true"));
    wait_gone(&client, &forced.deployment_id).await;
    assert!(!client.blocked_by_constraints("/toto/web").await.unwrap());
    assert!(client.queue().await.unwrap().is_empty());
}

#[tokio::test]
async fn queue_shows_unfulfilled_constraints() {
    let sim = sim(&["node-1", "node-2"]).await;
    let client = client(&sim);
    let mut app = App::docker("/a", "busybox", 1);
    app.constraints = Some(Constraints::from_iter([Constraint::hostname_like(
        "node-1.example",
    )]));
    client.create_app(&app).await.unwrap();
    for _ in 0..200 {
        if client.blocked_by_constraints("/a").await.unwrap() {
            let queue = client.queue().await.unwrap();
            assert_eq!(queue[0].app_id(), Some("/a"));
            assert_eq!(queue[0].declined_by_constraints(), 2);
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the escaped LIKE pin must not match node-1");
}

#[tokio::test]
async fn validation_errors_carry_paths() {
    let sim = sim(&["node-1"]).await;
    let client = client(&sim);
    client.create_app(&App::docker("/a", "busybox", 0)).await.unwrap();
    let update = AppUpdate {
        constraints: Some(Constraints::from_iter([Constraint::new(
            "hostname",
            "LIKE",
            Some(""),
        )])),
        ..AppUpdate::default()
    };
    match client.update_app("/a", &update, false).await {
        Err(MarathonError::Validation { message, details }) => {
            assert_eq!(message, "Object is not valid");
            assert_eq!(details[0].path, "/constraints(0)");
            assert_eq!(
                details[0].errors,
                ["LIKE and UNLIKE require a non-empty, regular expression value"]
            );
        }
        other => panic!("expected Validation, got {other:?}"),
    }
}

#[tokio::test]
async fn update_of_a_deleted_app_is_not_found_and_creates_nothing() {
    let sim = sim(&["node-1"]).await;
    let client = client(&sim);
    let update = AppUpdate {
        constraints: Some(Constraints::from_iter([Constraint::hostname_cluster("node-1")])),
        ..AppUpdate::default()
    };
    assert!(matches!(
        client.update_app("/gone", &update, false).await,
        Err(MarathonError::NotFound { .. })
    ));
    assert!(client.list_apps("/").await.unwrap().is_empty());
}

#[tokio::test]
async fn server_errors_and_timeouts_are_retryable() {
    let sim = sim(&["node-1"]).await;
    let client = client(&sim);
    sim.inject_faults(1, Some(503), Duration::ZERO);
    let error = client.info().await.unwrap_err();
    assert!(
        matches!(error, MarathonError::Server { status: 503, .. }),
        "{error:?}"
    );
    assert!(error.is_retryable());
    assert!(client.info().await.is_ok(), "the next request is served");

    berth::tls::install_crypto_provider();
    let impatient = MarathonClient::new(MarathonConfig {
        request_timeout: Duration::from_millis(200),
        ..MarathonConfig::new([sim.url()])
    })
    .unwrap();
    sim.inject_faults(1, None, Duration::from_secs(3));
    let error = impatient.info().await.unwrap_err();
    assert!(matches!(error, MarathonError::Timeout { .. }), "{error:?}");
    assert!(error.is_retryable());
}

#[tokio::test]
async fn restart_replaces_every_task() {
    let sim = sim(&["node-1"]).await;
    let client = client(&sim);
    client.create_app(&App::docker("/a", "busybox", 2)).await.unwrap();
    wait_idle(&client).await;
    let before: Vec<String> = client
        .app_tasks("/a")
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    let restart = client.restart_app("/a", false).await.unwrap();
    assert!(!sim.write_requests().last().unwrap().query.contains("force"));
    wait_gone(&client, &restart.deployment_id).await;
    let after = client.app_tasks("/a").await.unwrap();
    assert_eq!(after.len(), 2);
    assert!(after.iter().all(|t| !before.contains(&t.id)));
    assert!(matches!(
        client.restart_app("/nope", false).await,
        Err(MarathonError::NotFound { .. })
    ));
}
