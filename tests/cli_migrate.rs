//! `berth migrate` and `berth drain` against a real kube-apiserver, without a controller: the
//! test plays the controller, writing statuses through the status subresource, and checks what
//! the commands patch, print and exit with.
mod support;

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::Duration,
};

use berth::crd::StatefulLocalVolume;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::{Value, json};
use support::*;
use tokio::sync::mpsc;

/// How long any one step may take before the test gives up.
const STEP: Duration = Duration::from_secs(30);

fn berth(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args(args)
        .env("KUBECONFIG", kubeconfig())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    cmd
}

/// Runs berth to its end.
async fn run(args: &[&str]) -> Output {
    let mut cmd = berth(args);
    let output = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap();
    output.expect("run berth")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A berth process whose stdout lines the test reads as they come.
struct Running {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    stdout: Vec<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        let mut child = berth(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start berth");
        let (tx, lines) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Running {
            child,
            lines,
            stdout: Vec::new(),
            stderr,
        }
    }

    /// Waits for a line of stdout that contains `part`.
    async fn line(&mut self, part: &str) -> String {
        loop {
            match tokio::time::timeout(STEP, self.lines.recv()).await {
                Ok(Some(line)) => {
                    self.stdout.push(line.clone());
                    if line.contains(part) {
                        return line;
                    }
                }
                _ => panic!(
                    "berth printed no line with {part:?}; it printed:\n{}",
                    self.stdout.join("\n")
                ),
            }
        }
    }

    /// Waits for the end: exit status, all of stdout, stderr.
    async fn finish(mut self) -> (ExitStatus, String, String) {
        let mut child = self.child;
        let status = tokio::time::timeout(STEP, tokio::task::spawn_blocking(move || child.wait()))
            .await
            .expect("berth ends")
            .unwrap()
            .unwrap();
        while let Some(line) = self.lines.recv().await {
            self.stdout.push(line);
        }
        (status, self.stdout.join("\n"), self.stderr.join().unwrap())
    }
}

async fn setup(prefix: &str) -> (Api<StatefulLocalVolume>, String) {
    let client = admin_client().await;
    install_crd(&client).await;
    let ns = namespace(&client, prefix).await;
    (Api::namespaced(client, &ns), ns)
}

async fn create(api: &Api<StatefulLocalVolume>, name: &str, app: &str, extra: Value) {
    let mut spec = json!({"app": app, "containerPath": "/data", "hostPath": format!("/{name}")});
    spec.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    create_volume(api, name, spec).await;
}

fn condition(type_: &str, status: bool, reason: &str, message: &str, generation: Option<i64>) -> Value {
    json!({"type": type_, "status": if status { "True" } else { "False" }, "reason": reason,
           "message": message, "observedGeneration": generation,
           "lastTransitionTime": "2026-01-01T00:00:00Z"})
}

/// Writes a status as the controller would, for the volume's current generation.
async fn set_status(api: &Api<StatefulLocalVolume>, name: &str, host: &str, state: State<'_>) {
    let generation = api.get(name).await.unwrap().metadata.generation;
    let (phase, migration, conditions) = match state {
        State::Ready => (
            "Bound",
            Value::Null,
            vec![condition(
                "Ready",
                true,
                "Bound",
                "mounted into the app",
                generation,
            )],
        ),
        State::Moving { to, step, progress } => (
            "Migrating",
            json!({"from": host, "to": to, "id": "m1", "step": step, "pass": 1, "progress": progress}),
            vec![
                condition("Ready", false, "Migrating", "moving", generation),
                condition("Reconciling", true, "Migrating", "moving", generation),
            ],
        ),
        State::Stalled(message) => (
            "Failed",
            Value::Null,
            vec![
                condition("Ready", false, "NoRoom", message, generation),
                condition("Stalled", true, "NoRoom", message, generation),
            ],
        ),
    };
    let status = json!({"status": {"phase": phase, "host": host, "observedGeneration": generation,
                                   "migration": migration, "conditions": conditions}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_or_else(|e| panic!("write the status of {name}: {e}"));
}

enum State<'a> {
    Ready,
    Moving {
        to: &'a str,
        step: &'a str,
        progress: &'a str,
    },
    Stalled(&'a str),
}

fn placement(v: &StatefulLocalVolume) -> Value {
    serde_json::to_value(&v.spec.placement).unwrap()
}

/// Waits until `check` holds for volume `name`.
async fn until(api: &Api<StatefulLocalVolume>, name: &str, check: impl Fn(&StatefulLocalVolume) -> bool) {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let v = api.get(name).await.unwrap();
        if check(&v) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never got there: {:?}",
            v.spec.placement
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn migrate_no_wait_patches_every_volume_of_the_app_and_only_those() {
    let (api, ns) = setup("mig").await;
    let db = format!("/{ns}/db");
    let extra =
        json!({"placement": {"avoidHosts": ["node-2", "node-3"]}, "capacity": "1Gi", "readOnly": true});
    create(&api, "db-data", &db, extra).await;
    create(&api, "db-logs", &db, json!({"placement": {"host": "node-1"}})).await;
    create(
        &api,
        "web",
        &format!("/{ns}/web"),
        json!({"placement": {"host": "node-1"}}),
    )
    .await;
    for name in ["db-data", "db-logs", "web"] {
        set_status(&api, name, "node-1", State::Ready).await;
    }
    let web_before = api.get("web").await.unwrap();
    let data_before = api.get("db-data").await.unwrap();

    let out = run(&["migrate", &format!("{ns}/db-data"), "--to", "node-2", "--no-wait"]).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("asked 2 volumes of"), "{stdout}");

    let data = api.get("db-data").await.unwrap();
    assert_eq!(
        placement(&data),
        json!({"host": "node-2", "avoidHosts": ["node-3"]})
    );
    let mut expected = data_before.spec.clone();
    expected.placement = data.spec.placement.clone();
    assert_eq!(data.spec, expected, "other spec fields are kept");
    assert_eq!(
        placement(&api.get("db-logs").await.unwrap()),
        json!({"host": "node-2"})
    );
    let web = api.get("web").await.unwrap();
    assert_eq!(
        web.resource_version(),
        web_before.resource_version(),
        "another app is untouched"
    );
}

#[tokio::test]
async fn migrate_follows_the_move_until_the_app_is_ready_on_the_new_host() {
    let (api, ns) = setup("mig").await;
    let db = format!("/{ns}/db");
    for name in ["db-data", "db-logs"] {
        create(&api, name, &db, json!({})).await;
        set_status(&api, name, "node-1", State::Ready).await;
    }
    let mut berth = Running::start(&[
        "migrate",
        &format!("{ns}/db-data"),
        "--to",
        "node-2",
        "--timeout",
        "60s",
    ]);
    // Listed: the watch shows the volumes where they are.
    berth.line(&format!("{ns}/db-logs  Bound  ready  node-1")).await;
    for name in ["db-data", "db-logs"] {
        until(&api, name, |v| {
            v.spec.placement.as_ref().and_then(|p| p.host.as_deref()) == Some("node-2")
        })
        .await;
    }
    let progress = "412Mi of 1.0Gi, 1200 of 3000 files";
    for (step, progress) in [
        ("Copying", progress),
        ("FinalCopy", "1.0Gi of 1.0Gi, 3000 of 3000 files"),
    ] {
        for name in ["db-data", "db-logs"] {
            let moving = State::Moving {
                to: "node-2",
                step,
                progress,
            };
            set_status(&api, name, "node-1", moving).await;
        }
    }
    berth
        .line(&format!("{ns}/db-data  Copying  {progress}  node-1 → node-2"))
        .await;
    set_status(&api, "db-data", "node-2", State::Ready).await;
    set_status(&api, "db-logs", "node-2", State::Ready).await;

    let (status, stdout, stderr) = berth.finish().await;
    assert!(status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("{ns}/db-logs  FinalCopy  1.0Gi of 1.0Gi")),
        "{stdout}"
    );
    let summary = format!("moved 2 volumes of {db} from node-1 to node-2 in ");
    assert!(stdout.lines().last().unwrap().starts_with(&summary), "{stdout}");
}

#[tokio::test]
async fn migrate_exits_1_with_the_message_when_the_move_stalls() {
    let (api, ns) = setup("mig").await;
    create(&api, "db", &format!("/{ns}/db"), json!({})).await;
    set_status(&api, "db", "node-1", State::Ready).await;
    let mut berth = Running::start(&[
        "migrate",
        &format!("{ns}/db"),
        "--to",
        "node-2",
        "--timeout",
        "60s",
    ]);
    berth.line(&format!("{ns}/db  Bound  ready  node-1")).await;
    until(&api, "db", |v| v.metadata.generation == Some(2)).await;
    set_status(
        &api,
        "db",
        "node-1",
        State::Stalled("node-2 has 200Mi free, the volume needs 1Gi"),
    )
    .await;
    let (status, stdout, stderr) = berth.finish().await;
    assert_eq!(status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "{ns}/db stalled: node-2 has 200Mi free, the volume needs 1Gi"
        )),
        "{stderr}"
    );
}

#[tokio::test]
async fn migrate_refuses_what_it_cannot_move() {
    let (api, ns) = setup("mig").await;
    let out = run(&["migrate", &format!("{ns}/nope"), "--to", "node-2"]).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("StatefulLocalVolume {ns}/nope not found")),
        "{stderr}"
    );

    create(&api, "fresh", &format!("/{ns}/fresh"), json!({})).await;
    let out = run(&["migrate", &format!("{ns}/fresh"), "--to", "node-2"]).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("is not bound to a host yet: set spec.placement.host instead"),
        "{stderr}"
    );
    assert_eq!(
        api.get("fresh").await.unwrap().spec.placement,
        None,
        "nothing patched"
    );

    create(
        &api,
        "there",
        &format!("/{ns}/there"),
        json!({"placement": {"host": "node-1"}}),
    )
    .await;
    set_status(&api, "there", "node-1", State::Ready).await;
    let before = api.get("there").await.unwrap().resource_version();
    let out = run(&["migrate", &format!("{ns}/there"), "--to", "node-1"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("already on node-1"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(api.get("there").await.unwrap().resource_version(), before);

    let finalizer = json!({"metadata": {"finalizers": ["berth.dev/volume"]}});
    api.patch("there", &PatchParams::default(), &Patch::Merge(&finalizer))
        .await
        .unwrap();
    api.delete("there", &DeleteParams::default()).await.unwrap();
    let out = run(&["migrate", &format!("{ns}/there"), "--to", "node-2"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("is being deleted"),
        "{}",
        text(&out.stderr)
    );
    let release = json!({"metadata": {"finalizers": null}});
    api.patch("there", &PatchParams::default(), &Patch::Merge(&release))
        .await
        .unwrap();

    let out = run(&["migrate", &format!("{ns}/there"), "--to", "node_2"]).await;
    assert_eq!(out.status.code(), Some(2), "clap refuses a bad host name");
    assert!(
        text(&out.stderr).contains("must be a host name"),
        "{}",
        text(&out.stderr)
    );
}

fn avoids(v: &StatefulLocalVolume, host: &str) -> bool {
    v.spec
        .placement
        .as_ref()
        .is_some_and(|p| p.avoid_hosts.iter().any(|h| h == host) && p.host.is_none())
}

#[tokio::test]
async fn drain_moves_the_apps_on_the_host_one_at_a_time() {
    let (api, ns) = setup("drain").await;
    // A host of its own, so that tests running at the same time do not meet on it.
    let host = format!("{ns}-host");
    let other = format!("{ns}-other");
    create(
        &api,
        "alpha",
        &format!("/{ns}/alpha"),
        json!({"placement": {"host": host}}),
    )
    .await;
    set_status(&api, "alpha", &host, State::Ready).await;
    for name in ["beta-data", "beta-logs"] {
        create(&api, name, &format!("/{ns}/beta"), json!({})).await;
        set_status(&api, name, &host, State::Ready).await;
    }
    create(
        &api,
        "delta",
        &format!("/{ns}/delta"),
        json!({"placement": {"host": host}}),
    )
    .await;
    create(&api, "gamma", &format!("/{ns}/gamma"), json!({})).await;
    set_status(&api, "gamma", &other, State::Ready).await;
    let gamma = api.get("gamma").await.unwrap().resource_version();

    let mut berth = Running::start(&["drain", &host, "--timeout", "60s"]);
    berth.line(&format!("{ns}/alpha  Bound  ready  {host}")).await;
    until(&api, "alpha", |v| avoids(v, &host)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !avoids(&api.get("beta-data").await.unwrap(), &host),
        "beta waits for alpha"
    );
    set_status(&api, "alpha", &other, State::Ready).await;

    berth.line(&format!("{ns}/beta-logs  Bound  ready  {host}")).await;
    for name in ["beta-data", "beta-logs"] {
        until(&api, name, |v| avoids(v, &host)).await;
        let moving = State::Moving {
            to: &other,
            step: "Copying",
            progress: "1Mi of 2Mi",
        };
        set_status(&api, name, &host, moving).await;
    }
    berth
        .line(&format!("{ns}/beta-data  Copying  1Mi of 2Mi  {host} → {other}"))
        .await;
    for name in ["beta-data", "beta-logs"] {
        set_status(&api, name, &other, State::Ready).await;
    }

    let (status, stdout, stderr) = berth.finish().await;
    assert!(status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("{ns}/delta  not bound to a host yet")),
        "{stdout}"
    );
    assert!(avoids(&api.get("delta").await.unwrap(), &host));
    assert_eq!(
        api.get("gamma").await.unwrap().resource_version(),
        gamma,
        "gamma is elsewhere"
    );
    let summary = format!("drained {host}: 2 apps, 3 volumes moved in ");
    assert!(stdout.lines().last().unwrap().starts_with(&summary), "{stdout}");
}

#[tokio::test]
async fn drain_reports_the_apps_that_stalled_and_goes_on() {
    let (api, ns) = setup("drain").await;
    let host = format!("{ns}-host");
    for app in ["alpha", "beta"] {
        create(&api, app, &format!("/{ns}/{app}"), json!({})).await;
        set_status(&api, app, &host, State::Ready).await;
    }
    let mut berth = Running::start(&["drain", &host, "--namespace", &ns, "--timeout", "60s"]);
    berth.line(&format!("{ns}/alpha  Bound  ready  {host}")).await;
    until(&api, "alpha", |v| avoids(v, &host)).await;
    set_status(&api, "alpha", &host, State::Stalled("no other host has 1Gi free")).await;
    berth.line(&format!("{ns}/beta  Bound  ready  {host}")).await;
    set_status(&api, "beta", "elsewhere", State::Ready).await;

    let (status, stdout, stderr) = berth.finish().await;
    assert_eq!(status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("drained {host}: 1 app, 1 volume moved in ")),
        "{stdout}"
    );
    assert!(
        stderr.contains(&format!(
            "/{ns}/alpha (namespace {ns}): {ns}/alpha: no other host has 1Gi free"
        )),
        "{stderr}"
    );
}

#[tokio::test]
async fn drain_no_wait_patches_every_app_at_once() {
    let (api, ns) = setup("drain").await;
    let host = format!("{ns}-host");
    for app in ["alpha", "beta"] {
        create(&api, app, &format!("/{ns}/{app}"), json!({})).await;
        set_status(&api, app, &host, State::Ready).await;
    }
    let out = run(&["drain", &host, "--no-wait"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!("asked 2 apps to leave {host}")),
        "{}",
        text(&out.stdout)
    );
    for app in ["alpha", "beta"] {
        assert!(avoids(&api.get(app).await.unwrap(), &host));
    }
    let out = run(&["drain", "nobody-is-here", "--no-wait"]).await;
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("nothing to drain"));
}
