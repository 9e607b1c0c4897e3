//! How fast one controller binds many volumes, and what a steady state costs.
//!
//! Starts the real stack (kube-apiserver v1.20.2, the Marathon simulator, one `berth agent` per
//! host, `berth controller` as a process), creates `BENCH_APPS` running Marathon apps with
//! `BENCH_VOLUMES_PER_APP` volumes each, and measures the time until every volume is Ready, the
//! Marathon writes that took (ideally one per app), and the requests one resync costs once all is
//! bound (ideally no writes at all). Run as root:
//!
//! ```text
//! cargo bench --bench controller_scale            # BENCH_APPS=100 BENCH_VOLUMES_PER_APP=3 BENCH_HOSTS=5
//! ```
//!
//! The steady state is watched for `BENCH_STEADY_SECS` (45) with `--resync BENCH_RESYNC_SECS`
//! (20); at 10,000 volumes use a resync nearer production's (5 min) and a longer window.
#[path = "../tests/support/mod.rs"]
mod support;
#[path = "../tests/support_helm/mod.rs"]
mod support_helm;

use std::time::{Duration, Instant};

use berth::crd::StatefulLocalVolume;
use kube::Api;
use serde_json::json;
use support::{admin_client, install_crd, namespace, stack::Stack};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let apps = env("BENCH_APPS", 100);
    let per_app = env("BENCH_VOLUMES_PER_APP", 3);
    let host_count = env("BENCH_HOSTS", 5);
    let resync = env("BENCH_RESYNC_SECS", 20);
    let steady = env("BENCH_STEADY_SECS", 45);
    let hosts: Vec<String> = (1..=host_count).map(|i| format!("node-{i}")).collect();
    let host_refs: Vec<&str> = hosts.iter().map(String::as_str).collect();

    let client = admin_client().await;
    install_crd(&client).await;
    support_helm::apply_chart_rbac(&client, json!({})).await;
    let ns = namespace(&client, "bench").await;
    let stack = Stack::start(&host_refs).await;
    let http = reqwest::Client::new();
    for a in 0..apps {
        let app = json!({"id": format!("/{ns}/app-{a}"), "cmd": "serve", "cpus": 0.01, "mem": 16, "instances": 1,
                         "container": {"type": "DOCKER", "docker": {"image": "busybox"}}});
        let res = http
            .post(format!("{}/v2/apps", stack.sim.url()))
            .json(&app)
            .send()
            .await
            .expect("create app");
        assert_eq!(res.status(), 201);
    }
    // Let the apps' first deployments finish.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.sim.clear_requests();

    // Resync long enough not to interfere with the first pass; measured separately below.
    let resync_flag = format!("{resync}s");
    let ctl = stack.controller(&ns, &["--resync", &resync_flag]).await;
    let api: Api<StatefulLocalVolume> = Api::namespaced(client.clone(), &ns);
    let started = Instant::now();
    for a in 0..apps {
        for v in 0..per_app {
            let spec = json!({"app": format!("/{ns}/app-{a}"), "containerPath": format!("/data{v}"),
                              "hostPath": format!("/app-{a}/data{v}"), "owner": {"uid": 1000, "gid": 1000}});
            support::create_volume(&api, &format!("app-{a}-v{v}"), spec).await;
        }
    }
    let created = started.elapsed();
    let total = apps * per_app;
    loop {
        let list = api.list(&Default::default()).await.expect("list volumes");
        let ready = list
            .items
            .iter()
            .filter(|v| {
                v.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                })
            })
            .count();
        if ready == total {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "only {ready} of {total} Ready after 15 min"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let all_ready = started.elapsed();
    let writes = stack.sim.write_requests().len();
    let requests = stack.sim.requests().len();

    // Steady state: two resync periods with nothing to do.
    stack.sim.clear_requests();
    tokio::time::sleep(Duration::from_secs(steady as u64)).await;
    let steady_requests = stack.sim.requests().len();
    let steady_writes = stack.sim.write_requests().len();
    let metrics = reqwest::get(format!("{}/metrics", ctl.metrics))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let reconciles = metrics
        .lines()
        .find(|l| l.starts_with("berth_reconciles_total"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or("?")
        .to_owned();

    let mib = |field| {
        ctl.memory_kib(field)
            .map_or("?".into(), |k| format!("{:.0} MiB", k as f64 / 1024.0))
    };
    println!("apps {apps}, volumes per app {per_app}, hosts {host_count}, volumes {total}");
    println!(
        "controller memory: {} resident, {} at peak",
        mib("VmRSS"),
        mib("VmHWM")
    );
    println!(
        "created {total} volumes in the apiserver in {:.1} s",
        created.as_secs_f64()
    );
    println!(
        "all Ready after {:.1} s ({:.0} volumes/s)",
        all_ready.as_secs_f64(),
        total as f64 / all_ready.as_secs_f64()
    );
    println!("Marathon writes while binding: {writes} ({apps} apps); Marathon requests: {requests}");
    println!(
        "steady state, {steady} s with --resync {resync}s: {steady_writes} writes, {steady_requests} Marathon requests; reconciles so far: {reconciles}"
    );
}
