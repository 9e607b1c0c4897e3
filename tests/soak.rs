//! The fault soak: berth binds volumes while everything around it fails, and at the end every
//! volume is Ready, no app was written more often than its changes need, no data was deleted or
//! created twice, and a standby took over within the lease.
//!
//! Faults, all at once: Marathon answers 503 to 30% of requests after a random latency of up to
//! 2 s; agents are killed and restarted at random; two controller replicas run with leader
//! election, and the leader is killed with SIGKILL at random, including at crash points right
//! after a pass recorded a placement and right after it wrote an app (`BERTH_CRASH_POINTS`).
//!
//! Short form (the default, what CI runs): 12 apps × 2 volumes, 3 hosts, 60 s of faults.
//! Long form: `BERTH_SOAK=long` (60 apps × 3 volumes, 4 hosts, 10 min).
mod support;
mod support_helm;
mod support_scenario;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use serde_json::json;
use support::stack::{ControllerProcess, Stack};
use support_scenario::{Scenario, docker_app};

/// The Lease's duration (`leader.rs`).
const LEASE: Duration = Duration::from_secs(15);

struct Plan {
    apps: usize,
    per_app: usize,
    hosts: usize,
    chaos: Duration,
}

fn plan() -> Plan {
    if std::env::var("BERTH_SOAK").as_deref() == Ok("long") {
        Plan {
            apps: 60,
            per_app: 3,
            hosts: 4,
            chaos: Duration::from_secs(600),
        }
    } else {
        Plan {
            apps: 12,
            per_app: 2,
            hosts: 3,
            chaos: Duration::from_secs(60),
        }
    }
}

/// A tiny deterministic generator, so a failing soak can be replayed with its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

const NAMES: [&str; 2] = ["replica-a", "replica-b"];

/// One controller replica with leader election; with `faults`, it aborts at random at the crash
/// points right after a placement record and right after an app write.
async fn replica(stack: &Stack, ns: &str, lease: &str, identity: &str, faults: bool) -> ControllerProcess {
    let agents: Vec<String> = stack
        .hosts
        .iter()
        .map(|h| format!("{}={}", h.name, h.url))
        .collect();
    let mut args: Vec<&str> = vec![
        "--leader-elect",
        "--lease-name",
        lease,
        "--lease-namespace",
        "berth",
        "--identity",
        identity,
    ];
    for a in &agents {
        args.extend(["--agent", a]);
    }
    let crash: &[(&str, &str)] = &[(
        "BERTH_CRASH_POINTS",
        "after-placement-record:0.15,after-app-write:0.15",
    )];
    stack
        .controller_with_env(ns, &args, if faults { crash } else { &[] })
        .await
}

async fn role(c: &ControllerProcess) -> String {
    match reqwest::get(format!("{}/readyz", c.metrics)).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berth_converges_through_faults_and_loses_nothing() {
    let plan = plan();
    let seed = std::env::var("BERTH_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0001u64);
    eprintln!("soak: seed {seed} (BERTH_SOAK_SEED replays it)");
    let mut rng = Rng(seed);
    let names: Vec<String> = (1..=plan.hosts).map(|i| format!("node-{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut s = Scenario::start(&refs).await;
    // The chart's RBAC for two replicas (the Lease).
    support_helm::apply_chart_rbac(&support::admin_client().await, json!({"replicaCount": 2})).await;
    let apps: Vec<String> = (0..plan.apps).map(|a| s.app_id(&format!("app-{a}"))).collect();
    for id in &apps {
        s.create_app(docker_app(id)).await;
    }
    for id in &apps {
        s.wait_app_settled(id).await;
    }
    s.stack.sim.clear_requests();

    let lease = format!("berth-soak-{}", s.ns);
    let mut replicas = vec![
        replica(&s.stack, &s.ns, &lease, "replica-a", true).await,
        replica(&s.stack, &s.ns, &lease, "replica-b", true).await,
    ];
    s.stack.sim.chaos(0.3, 503, Duration::from_secs(2), seed);

    // Volumes arrive during the faults, one app's volumes together.
    let mut pending: Vec<usize> = (0..plan.apps).collect();
    let mut takeovers: Vec<Duration> = Vec::new();
    let mut kills = 0;
    let mut crashes = 0;
    let mut agent_restarts = 0;
    let began = Instant::now();
    while began.elapsed() < plan.chaos {
        if let Some(a) = pending.pop() {
            for v in 0..plan.per_app {
                s.apply(
                    &format!("app-{a}-v{v}"),
                    json!({"app": apps[a], "containerPath": format!("/data{v}"), "hostPath": format!("/app-{a}/data{v}")}),
                )
                .await;
            }
        }
        // Replicas a crash point aborted come back.
        for (i, r) in replicas.iter_mut().enumerate() {
            if r.exited() {
                crashes += 1;
                *r = replica(&s.stack, &s.ns, &lease, NAMES[i], true).await;
            }
        }
        match rng.below(4) {
            0 => {
                // Kill the leader; time how long the other replica takes to lead.
                let mut leader = None;
                for (i, r) in replicas.iter().enumerate() {
                    if role(r).await.contains("leader") {
                        leader = Some(i);
                    }
                }
                if let Some(i) = leader {
                    replicas[i].kill();
                    kills += 1;
                    let killed = Instant::now();
                    let other = 1 - i;
                    // The standby leads within the lease, unless a crash point aborted it too.
                    loop {
                        if role(&replicas[other]).await.contains("leader") {
                            takeovers.push(killed.elapsed());
                            break;
                        }
                        if replicas[other].exited() {
                            break;
                        }
                        assert!(killed.elapsed() < Duration::from_secs(60), "no standby took over");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    replicas[i] = replica(&s.stack, &s.ns, &lease, NAMES[i], true).await;
                }
            }
            1 => {
                let h = rng.below(plan.hosts as u64) as usize;
                s.stack.hosts[h].restart_agent().await;
                agent_restarts += 1;
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(500 + rng.below(1500))).await;
    }
    // Whatever was not applied yet arrives now.
    for a in pending.drain(..) {
        for v in 0..plan.per_app {
            s.apply(
                &format!("app-{a}-v{v}"),
                json!({"app": apps[a], "containerPath": format!("/data{v}"), "hostPath": format!("/app-{a}/data{v}")}),
            )
            .await;
        }
    }

    // The faults stop: Marathon answers, every agent runs, the replicas run without crash
    // points.
    s.stack.sim.chaos(0.0, 503, Duration::ZERO, 0);
    for r in &mut replicas {
        r.kill();
    }
    replicas = vec![
        replica(&s.stack, &s.ns, &lease, "replica-a", false).await,
        replica(&s.stack, &s.ns, &lease, "replica-b", false).await,
    ];

    // Every volume Ready; a marker written into its data as soon as it is bound.
    let mut markers: BTreeMap<String, std::path::PathBuf> = BTreeMap::new();
    for a in 0..plan.apps {
        for v in 0..plan.per_app {
            let name = format!("app-{a}-v{v}");
            let bound = s.wait_condition(&name, "Ready", "Bound", 240).await;
            let host = bound.status.unwrap().host.unwrap();
            let path = s
                .stack
                .host(&host)
                .tenant_path(&s.ns, &format!("/app-{a}/data{v}"));
            std::fs::write(path.join("marker"), &name).unwrap();
            markers.insert(name, path);
        }
    }
    // A few more passes with agents restarting must keep every byte.
    for h in 0..plan.hosts {
        s.stack.hosts[h].restart_agent().await;
    }
    tokio::time::sleep(Duration::from_secs(8)).await;

    for (name, path) in &markers {
        assert_eq!(
            std::fs::read_to_string(path.join("marker")).unwrap(),
            *name,
            "data kept"
        );
    }
    // Each volume's data exists on exactly one host: nothing was created twice.
    for a in 0..plan.apps {
        for v in 0..plan.per_app {
            let on: Vec<&str> = s
                .stack
                .hosts
                .iter()
                .filter(|h| h.tenant_path(&s.ns, &format!("/app-{a}/data{v}")).exists())
                .map(|h| h.name.as_str())
                .collect();
            assert_eq!(on.len(), 1, "app-{a}-v{v} is on {on:?}");
        }
    }
    // Each app's volumes arrived in at most `per_app` changes: at most that many writes took,
    // none of them a repeat of the one before (a write that changes nothing still restarts the
    // tasks), and nothing asked for a restart.
    let log = s.stack.sim.requests();
    for id in &apps {
        let path = format!("/v2/apps{id}");
        let writes: Vec<&str> = log
            .iter()
            .filter(|r| r.method == "PATCH" && r.path == path && r.status == 200)
            .map(|r| r.body.as_str())
            .collect();
        assert!(
            (1..=plan.per_app).contains(&writes.len()),
            "{id}: {} writes for {} volumes",
            writes.len(),
            plan.per_app
        );
        for pair in writes.windows(2) {
            assert_ne!(pair[0], pair[1], "{id}: the same write twice");
        }
        let restarts = log
            .iter()
            .filter(|r| r.method == "POST" && r.path == format!("{path}/restart"))
            .count();
        assert_eq!(restarts, 0, "{id}: restarts");
    }
    let failures = log.iter().filter(|r| r.status >= 500).count();
    eprintln!(
        "soak: {} volumes, {} Marathon requests ({failures} failed on purpose), {kills} leaders killed, {crashes} replicas aborted at a crash point, {agent_restarts} agent restarts, takeovers {:?}",
        markers.len(),
        log.len(),
        takeovers
    );
    for t in &takeovers {
        assert!(
            *t <= LEASE + Duration::from_secs(5),
            "a standby takes over within the lease (plus one renewal check): {t:?}"
        );
    }
    drop(replicas);
}
