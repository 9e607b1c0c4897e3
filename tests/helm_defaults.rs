//! What the chart's defaults install, through the real Helm engine (see `tests/helm_chart.rs`):
//! values without any agent source are refused with a message that names both ways to give one,
//! and the controller the defaults configure starts and keeps serving instead of exiting (it
//! used to crash-loop: no agents, so `berth controller` stopped at start).
mod support;
mod support_helm;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use serde_json::{Value, json};
use support_helm::{one, template, try_template};

#[test]
fn values_without_an_agent_source_are_refused() {
    for values in [
        json!({"agents": {"app": ""}}),
        json!({"agents": {"app": "", "static": []}}),
    ] {
        let err = try_template("berth", "berth", &values)
            .map(|_| ())
            .expect_err(&format!("values {values} were accepted"));
        for expect in [
            "at '/agents': 'anyOf' failed",
            "at '/agents/static': minItems: got 0, want 1",
            "at '/agents/app': minLength: got 0, want 1",
        ] {
            assert!(
                err.contains(expect),
                "values {values}: expected {expect:?} in:\n{err}"
            );
        }
    }
    // Either source alone is enough.
    let static_only =
        json!({"agents": {"app": "", "static": [{"host": "node-1", "url": "https://10.0.0.1:8443"}]}});
    let rendered = args(&template("berth", "berth", &static_only));
    assert!(
        rendered.contains(&"--agent=node-1=https://10.0.0.1:8443".to_string()),
        "{rendered:?}"
    );
    assert!(
        !rendered.iter().any(|a| a.starts_with("--agent-app")),
        "{rendered:?}"
    );
    let app_only = template("berth", "berth", &json!({"agents": {"app": "/ops/agent"}}));
    assert!(args(&app_only).contains(&"--agent-app=/ops/agent".to_string()));
}

fn args(objects: &[Value]) -> Vec<String> {
    let deployment = one(objects, "Deployment");
    serde_json::from_value(deployment["spec"]["template"]["spec"]["containers"][0]["args"].clone())
        .expect("args")
}

/// The command line the defaults render, run as the real `berth controller` against the test
/// apiserver (with the token file and listen address a pod would have replaced by local ones):
/// it serves `/readyz` and is still running, where the old defaults made it exit at once.
#[tokio::test]
async fn the_default_controller_starts_and_keeps_running() {
    let client = support::admin_client().await;
    support::install_crd(&client).await;
    let rendered = args(&template("berth", "berth", &json!({})));
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "helm-defaults-test-token").unwrap();
    let local: Vec<String> = rendered
        .iter()
        .map(|a| {
            if a.starts_with("--agent-secret-file=") {
                format!("--agent-secret-file={}", token.display())
            } else if a.starts_with("--listen=") {
                "--listen=127.0.0.1:0".to_string()
            } else {
                a.clone()
            }
        })
        .collect();
    let mut child = Command::new(support::stack::berth_bin())
        .args(&local)
        .env("KUBECONFIG", support::kubeconfig())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start berth controller");
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = Vec::new();
    let mut addr = None;
    // Until the start line, or the controller stops (the channel closes), with a safety net.
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(60)) {
        addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .filter(|_| line.contains("serving /metrics"))
            .map(str::to_owned);
        log.push(line);
        if addr.is_some() {
            break;
        }
    }
    let addr = addr.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("{local:?}\nstopped or never served:\n{}", log.join("\n"))
    });
    let mut ready = false;
    for _ in 0..100 {
        if reqwest::get(format!("http://{addr}/readyz"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let running = child.try_wait().expect("poll the controller").is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready, "{addr}/readyz never answered:\n{}", log.join("\n"));
    assert!(running, "the controller exited:\n{}", log.join("\n"));
}
