//! Two controller replicas with `--leader-elect`, as the chart runs them with `replicaCount: 2`,
//! with exactly the chart's RBAC for that case (the Lease Role included): one leads and works,
//! the other stands by, and takes over when the leader dies.
mod support;
mod support_helm;

use std::time::Duration;

use berth::crd::StatefulLocalVolume;
use kube::Api;
use serde_json::json;
use support::{
    admin_client, install_crd, namespace,
    stack::{ControllerProcess, Stack, eventually},
};

async fn readyz(ctl: &ControllerProcess) -> String {
    match reqwest::get(format!("{}/readyz", ctl.metrics)).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => format!("unreachable: {e}"),
    }
}

async fn volume(api: &Api<StatefulLocalVolume>, name: &str, app: &str, path: &str) {
    support::create_volume(
        api,
        name,
        json!({"app": app, "containerPath": path, "hostPath": path}),
    )
    .await;
}

async fn wait_ready(api: &Api<StatefulLocalVolume>, name: &str) {
    eventually(60, &format!("{name} to be Ready"), || async {
        let v = api.get(name).await.ok()?;
        v.status?
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_leads_and_the_other_takes_over() {
    let client = admin_client().await;
    install_crd(&client).await;
    support_helm::apply_chart_rbac(&client, json!({"replicaCount": 2})).await;
    let ns = namespace(&client, "toto").await;
    let stack = Stack::start(&["node-1"]).await;
    let app = format!("/{ns}/web");
    let res = reqwest::Client::new()
        .post(format!("{}/v2/apps", stack.sim.url()))
        .json(&json!({"id": app, "cmd": "serve", "instances": 1,
                      "container": {"type": "DOCKER", "docker": {"image": "busybox"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    // A Lease per test, so tests running beside this one do not compete for it.
    let lease = format!("berth-test-{ns}");
    let replica = |name: &'static str| {
        let args: Vec<String> = [
            "--leader-elect",
            "--lease-name",
            &lease,
            "--lease-namespace",
            "berth",
            "--identity",
            name,
        ]
        .map(str::to_owned)
        .to_vec();
        args
    };
    let start = |args: Vec<String>| {
        let (stack, ns) = (&stack, &ns);
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            stack.controller(ns, &args).await
        }
    };
    let mut first = start(replica("replica-a")).await;
    eventually(30, "replica-a to lead", || async {
        readyz(&first).await.contains("leader").then_some(())
    })
    .await;
    let second = start(replica("replica-b")).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        readyz(&second).await.contains("standby"),
        "the second replica must stand by"
    );

    let api: Api<StatefulLocalVolume> = Api::namespaced(client.clone(), &ns);
    volume(&api, "one", &app, "/one").await;
    wait_ready(&api, "one").await;
    assert!(
        first.log_text().contains("updated the Marathon app"),
        "the leader did the work"
    );
    assert!(
        !second.log_text().contains("updated the Marathon app"),
        "the standby wrote nothing"
    );

    // The leader dies without releasing the lease: the standby takes over after it expires.
    first.kill();
    eventually(60, "replica-b to lead", || async {
        readyz(&second).await.contains("leader").then_some(())
    })
    .await;
    volume(&api, "two", &app, "/two").await;
    wait_ready(&api, "two").await;
    let app_now: serde_json::Value = reqwest::get(format!("{}/v2/apps{app}", stack.sim.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths: Vec<&str> = app_now["app"]["container"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["containerPath"].as_str())
        .collect();
    assert_eq!(paths, ["/one", "/two"]);
}
