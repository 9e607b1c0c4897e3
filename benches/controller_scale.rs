//! How fast one controller binds many volumes, what it costs, and what a steady state costs.
//!
//! Starts the real stack (kube-apiserver v1.20.2, the Marathon simulator, one `berth agent` per
//! host, `berth controller` as a process with the chart's RBAC), creates `BENCH_APPS` running
//! Marathon apps, then creates `BENCH_VOLUMES_PER_APP` volumes for each the way a GitOps sync
//! does (`BENCH_CONCURRENCY` creates in flight from one client), and measures:
//!
//! - the time until every volume is Ready, and p50/p99 of each volume's time from its creation
//!   to Ready (from a watch);
//! - apiserver writes by resource and verb (from the apiserver's own `apiserver_request_total`),
//!   Marathon reads and writes (the simulator's request log), agent calls and app passes (the
//!   controller's metrics), the controller's CPU seconds and peak RSS;
//! - at rest, for `BENCH_STEADY_SECS` with `--resync BENCH_RESYNC_SECS`: the same counts per
//!   minute;
//! - with `BENCH_OUTAGE_SECS`: a Marathon outage that long (every request answered 503, the event
//!   stream cut) while one volume is added to every tenth app; the requests berth sends Marathon
//!   meanwhile, and the time from its return until every volume is Ready and Synced again.
//!
//! Run as root:
//!
//! ```text
//! cargo bench --bench controller_scale   # BENCH_APPS=100 BENCH_VOLUMES_PER_APP=3 BENCH_HOSTS=5
//!                                        # BENCH_CONCURRENCY=32 BENCH_RESYNC_SECS=20 BENCH_STEADY_SECS=45
//! ```
#[path = "../tests/support/mod.rs"]
mod support;
#[path = "../tests/support_helm/mod.rs"]
mod support_helm;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use berth::crd::StatefulLocalVolume;
use futures::{StreamExt, TryStreamExt};
use kube::{
    Api, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;
use support::{admin_client, install_crd, namespace, stack::Stack};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `apiserver_request_total` summed by (resource[/subresource], verb), for berth's group and
/// events, from the apiserver's own metrics.
async fn apiserver_writes(client: &kube::Client) -> BTreeMap<String, f64> {
    let req = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("a request");
    let text = client.request_text(req).await.expect("apiserver /metrics");
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let Some((labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(&format!("{name}=\""))
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap_or("")
                .to_owned()
        };
        let verb = label("verb");
        let resource = label("resource");
        if !matches!(
            verb.as_str(),
            "POST" | "PATCH" | "PUT" | "DELETE" | "CREATE" | "UPDATE" | "APPLY"
        ) {
            continue;
        }
        if resource != "statefullocalvolumes" && resource != "events" {
            continue;
        }
        let sub = label("subresource");
        let key = if sub.is_empty() {
            format!("{resource} {verb}")
        } else {
            format!("{resource}/{sub} {verb}")
        };
        *out.entry(key).or_default() += value.parse::<f64>().unwrap_or(0.0);
    }
    out
}

fn diff(after: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

/// Counters of the controller's `/metrics`: the sum of every series of `name`.
async fn controller_counter(metrics_url: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{metrics_url}/metrics"))
        .await
        .expect("controller metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| {
            l.starts_with(name) && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Controller passes: one per app pass (or, before apps were the unit, one per volume reconcile).
async fn passes(metrics_url: &str) -> f64 {
    let p = controller_counter(metrics_url, "berth_app_passes_total").await;
    if p > 0.0 {
        p
    } else {
        controller_counter(metrics_url, "berth_reconciles_total").await
    }
}

/// User + system CPU seconds of a process.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the state field.
    (ticks(11) + ticks(12)) / 100.0
}

struct MarathonCounts {
    reads: usize,
    writes: usize,
    by_kind: BTreeMap<String, usize>,
}

fn marathon_counts(stack: &Stack) -> MarathonCounts {
    let requests = stack.sim.requests();
    let mut by_kind = BTreeMap::new();
    for r in &requests {
        // `/v2/apps/ns/app-1` → `GET /v2/apps/*`; the kind of request, not the app.
        let kind = if r.path.starts_with("/v2/apps/") {
            let sub = ["/restart", "/tasks", "/versions"]
                .iter()
                .find(|s| r.path.ends_with(*s))
                .copied()
                .unwrap_or("");
            format!("{} /v2/apps/*{sub}", r.method)
        } else {
            format!("{} {}", r.method, r.path)
        };
        *by_kind.entry(kind).or_default() += 1;
    }
    let writes = requests
        .iter()
        .filter(|r| r.method != "GET" && r.method != "HEAD")
        .count();
    MarathonCounts {
        reads: requests.len() - writes,
        writes,
        by_kind,
    }
}

/// One volume's unavoidable writes, as berth makes them: create (the user's), finalizer,
/// placement record, final status.
async fn unavoidable_writes(api: &Api<StatefulLocalVolume>, ns: &str, a: usize, v: usize) {
    use kube::api::{Patch, PatchParams};
    let name = format!("app-{a}-v{v}");
    let spec = json!({"app": format!("/{ns}/app-{a}"), "containerPath": format!("/data{v}"),
                      "hostPath": format!("/app-{a}/data{v}"), "owner": {"uid": 1000, "gid": 1000}});
    let created = api
        .create(&kube::api::PostParams::default(), &support::volume(&name, spec))
        .await
        .expect("create the volume");
    let finalizer = json!({"metadata": {"finalizers": ["berth.dev/volume"], "resourceVersion": created.resource_version()}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&finalizer))
        .await
        .expect("add the finalizer");
    let status = |phase: &str, ready: &str, reason: &str| {
        json!({"apiVersion": "berth.dev/v1alpha1", "kind": "StatefulLocalVolume", "status": {
            "phase": phase, "host": "node-1", "app": format!("/{ns}/app-{a}"), "tenant": ns,
            "seal": "00".repeat(32), "observedGeneration": 1,
            "conditions": [{"type": "Ready", "status": ready, "reason": reason, "message": "m",
                            "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}]}})
    };
    let params = PatchParams::apply("berth-controller").force();
    api.patch_status(
        &name,
        &params,
        &Patch::Apply(status("Provisioning", "False", "Provisioning")),
    )
    .await
    .expect("placement record");
    api.patch_status(&name, &params, &Patch::Apply(status("Bound", "True", "Bound")))
        .await
        .expect("final status");
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let apps = env("BENCH_APPS", 100);
    let per_app = env("BENCH_VOLUMES_PER_APP", 3);
    let host_count = env("BENCH_HOSTS", 5);
    let concurrency = env("BENCH_CONCURRENCY", 32);
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

    // The floor: how long the same apiserver takes to absorb only the writes berth cannot avoid
    // for these volumes (create, finalizer, placement record, final status), at the same
    // concurrency, with no controller running.
    let floor_ns = namespace(&client, "floor").await;
    let floor_api: Api<StatefulLocalVolume> = Api::namespaced(client.clone(), &floor_ns);
    let floor_started = Instant::now();
    let names: Vec<(usize, usize)> = (0..apps)
        .flat_map(|a| (0..per_app).map(move |v| (a, v)))
        .collect();
    futures::stream::iter(names.clone())
        .for_each_concurrent(concurrency, |(a, v)| {
            let api = floor_api.clone();
            let ns = floor_ns.clone();
            async move { unavoidable_writes(&api, &ns, a, v).await }
        })
        .await;
    let floor = floor_started.elapsed();

    let resync_flag = format!("{resync}s");
    // The controller as in production: its default debounce and outage grace, info logs.
    let agents: Vec<String> = stack
        .hosts
        .iter()
        .map(|h| format!("{}={}", h.name, h.url))
        .collect();
    let mut args = vec![
        "--resync",
        &resync_flag,
        "--debounce",
        "1s",
        "--outage-grace",
        "60s",
    ];
    for a in &agents {
        args.extend(["--agent", a.as_str()]);
    }
    let ctl = stack
        .controller_with_env(&ns, &args, &[("RUST_LOG", "info")])
        .await;
    let api: Api<StatefulLocalVolume> = Api::namespaced(client.clone(), &ns);

    // Each volume's time to Ready, from a watch.
    let ready_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let watch = tokio::spawn({
        let ready_at = ready_at.clone();
        let api = api.clone();
        async move {
            let mut stream = watcher(api, watcher::Config::default()).applied_objects().boxed();
            while let Ok(Some(v)) = stream.try_next().await {
                let ready = v.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                });
                if ready {
                    ready_at
                        .lock()
                        .unwrap()
                        .entry(v.name_any())
                        .or_insert_with(Instant::now);
                }
            }
        }
    });

    stack.sim.clear_requests();
    let writes_before = apiserver_writes(&client).await;
    let cpu_before = cpu_seconds(ctl.pid());
    let started = Instant::now();
    let created_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let names: Vec<(usize, usize)> = (0..apps)
        .flat_map(|a| (0..per_app).map(move |v| (a, v)))
        .collect();
    futures::stream::iter(names)
        .for_each_concurrent(concurrency, |(a, v)| {
            let api = api.clone();
            let ns = ns.clone();
            let created_at = created_at.clone();
            async move {
                let name = format!("app-{a}-v{v}");
                let spec = json!({"app": format!("/{ns}/app-{a}"), "containerPath": format!("/data{v}"),
                                  "hostPath": format!("/app-{a}/data{v}"), "owner": {"uid": 1000, "gid": 1000}});
                support::create_volume(&api, &name, spec).await;
                created_at.lock().unwrap().insert(name, Instant::now());
            }
        })
        .await;
    let created = started.elapsed();
    let total = apps * per_app;
    loop {
        let ready = ready_at.lock().unwrap().len();
        if ready >= total {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "only {ready} of {total} Ready after 30 min"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all_ready = started.elapsed();
    let cpu_binding = cpu_seconds(ctl.pid()) - cpu_before;
    let writes_binding = diff(&apiserver_writes(&client).await, &writes_before);
    let marathon_binding = marathon_counts(&stack);
    let agent_binding = controller_counter(&ctl.metrics, "berth_agent_requests_total").await;
    let passes_binding = passes(&ctl.metrics).await;
    let mut latencies: Vec<f64> = {
        let created_at = created_at.lock().unwrap();
        let ready_at = ready_at.lock().unwrap();
        created_at
            .iter()
            .filter_map(|(n, c)| Some(ready_at.get(n)?.saturating_duration_since(*c).as_secs_f64()))
            .collect()
    };
    latencies.sort_by(|a, b| a.total_cmp(b));

    // At rest: nothing changes for `steady` seconds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stack.sim.clear_requests();
    let writes_rest_before = apiserver_writes(&client).await;
    let agent_rest_before = controller_counter(&ctl.metrics, "berth_agent_requests_total").await;
    let passes_rest_before = passes(&ctl.metrics).await;
    let cpu_rest_before = cpu_seconds(ctl.pid());
    tokio::time::sleep(Duration::from_secs(steady as u64)).await;
    let minutes = steady as f64 / 60.0;
    let writes_rest = diff(&apiserver_writes(&client).await, &writes_rest_before);
    let marathon_rest = marathon_counts(&stack);
    let agent_rest = controller_counter(&ctl.metrics, "berth_agent_requests_total").await - agent_rest_before;
    let passes_rest = passes(&ctl.metrics).await - passes_rest_before;
    let cpu_rest = cpu_seconds(ctl.pid()) - cpu_rest_before;
    watch.abort();

    let outage = env("BENCH_OUTAGE_SECS", 0);
    let outage_report = if outage > 0 {
        Some(marathon_outage(&stack, &api, &ns, apps, total, Duration::from_secs(outage as u64)).await)
    } else {
        None
    };

    let mib = |field| {
        ctl.memory_kib(field)
            .map_or("?".into(), |k| format!("{:.0} MiB", k as f64 / 1024.0))
    };
    let per_volume = |n: f64| n / total as f64;
    println!(
        "apps {apps}, volumes per app {per_app}, hosts {host_count}, volumes {total}, {concurrency} creates in flight"
    );
    println!("created {total} volumes in {:.1} s", created.as_secs_f64());
    println!(
        "all Ready after {:.1} s ({:.0} volumes/s); creation to Ready p50 {:.2} s, p99 {:.2} s",
        all_ready.as_secs_f64(),
        total as f64 / all_ready.as_secs_f64(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );
    println!(
        "floor (the same writes berth cannot avoid, no controller): {:.1} s; berth took {:.2}x the floor",
        floor.as_secs_f64(),
        all_ready.as_secs_f64() / floor.as_secs_f64()
    );
    println!(
        "controller: {:.1} CPU s while binding, memory {} resident, {} at peak",
        cpu_binding,
        mib("VmRSS"),
        mib("VmHWM")
    );
    println!("while binding:");
    println!(
        "  passes {passes_binding:.0} ({:.2} per app); agent calls {agent_binding:.0} ({:.2} per volume)",
        passes_binding / apps as f64,
        per_volume(agent_binding)
    );
    println!(
        "  Marathon: {} reads ({:.2} per app), {} writes ({:.2} per app)",
        marathon_binding.reads,
        marathon_binding.reads as f64 / apps as f64,
        marathon_binding.writes,
        marathon_binding.writes as f64 / apps as f64
    );
    for (kind, n) in &marathon_binding.by_kind {
        println!("    {kind}: {n}");
    }
    let berth_writes: f64 = writes_binding
        .iter()
        .filter(|(k, _)| !k.starts_with("statefullocalvolumes POST"))
        .map(|(_, v)| v)
        .sum();
    println!(
        "  apiserver writes: {:.2} per volume besides the create ({berth_writes:.0} in all)",
        per_volume(berth_writes)
    );
    for (kind, n) in &writes_binding {
        println!("    {kind}: {n:.0} ({:.2} per volume)", per_volume(*n));
    }
    println!("at rest ({steady} s, --resync {resync}s), per minute:");
    println!(
        "  passes {:.0}, agent calls {:.0}, controller CPU {:.2} s",
        passes_rest / minutes,
        agent_rest / minutes,
        cpu_rest / minutes
    );
    println!(
        "  Marathon: {:.0} reads, {:.0} writes",
        marathon_rest.reads as f64 / minutes,
        marathon_rest.writes as f64 / minutes
    );
    for (kind, n) in &marathon_rest.by_kind {
        println!("    {kind}: {:.0}", *n as f64 / minutes);
    }
    let rest_writes: f64 = writes_rest.values().sum::<f64>().max(0.0);
    println!("  apiserver writes: {:.0}", rest_writes / minutes);
    for (kind, n) in &writes_rest {
        println!("    {kind}: {:.0}", n / minutes);
    }
    if let Some(o) = outage_report {
        println!(
            "Marathon outage ({outage} s: every request answered 503, the event stream cut), {} volumes created meanwhile:",
            o.added
        );
        println!(
            "  requests to Marathon: {} in all, {:.0} per minute",
            o.requests.values().sum::<usize>(),
            o.requests.values().sum::<usize>() as f64 / (outage as f64 / 60.0)
        );
        for (kind, n) in &o.requests {
            println!("    {kind}: {n}");
        }
        println!(
            "  after Marathon returned: every volume Ready and Synced in {:.1} s ({} Marathon writes)",
            o.converged.as_secs_f64(),
            o.writes_after
        );
    }
}

struct OutageReport {
    added: usize,
    requests: BTreeMap<String, usize>,
    converged: Duration,
    writes_after: usize,
}

/// Marathon goes away for `outage`: every request gets a 503 and the event stream is cut.
/// Meanwhile a GitOps sync adds one volume to every tenth app. Counts the requests berth sends
/// Marathon during the outage, then the time from Marathon's return until every volume is Ready
/// with `Synced=True` again.
async fn marathon_outage(
    stack: &Stack,
    api: &Api<StatefulLocalVolume>,
    ns: &str,
    apps: usize,
    total: usize,
    outage: Duration,
) -> OutageReport {
    stack.sim.clear_requests();
    stack.sim.chaos(1.0, 503, Duration::ZERO, 1);
    stack.sim.event_stream_outage(outage);
    let began = Instant::now();
    let added: Vec<usize> = (0..apps).step_by(10).collect();
    for a in &added {
        let spec = json!({"app": format!("/{ns}/app-{a}"), "containerPath": "/extra",
                          "hostPath": format!("/app-{a}/extra"), "owner": {"uid": 1000, "gid": 1000}});
        support::create_volume(api, &format!("app-{a}-extra"), spec).await;
    }
    tokio::time::sleep(outage.saturating_sub(began.elapsed())).await;
    let requests = marathon_counts(stack).by_kind;
    stack.sim.clear_requests();
    stack.sim.chaos(0.0, 503, Duration::ZERO, 0);
    let back = Instant::now();
    let want = total + added.len();
    loop {
        let list = api.list(&Default::default()).await.expect("list volumes");
        let settled = list
            .items
            .iter()
            .filter(|v| {
                let cond = |t: &str| {
                    v.status
                        .as_ref()
                        .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == t && c.status == "True"))
                };
                cond("Ready") && cond("Synced")
            })
            .count();
        if settled >= want {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(900),
            "only {settled} of {want} volumes settled 15 min after Marathon returned"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    OutageReport {
        added: added.len(),
        requests,
        converged: back.elapsed(),
        writes_after: marathon_counts(stack).writes,
    }
}
