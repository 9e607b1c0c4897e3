//! What the real `berth` binary writes to stderr: a refused logging configuration stops it at
//! start with a message and exit status 2; logs to a pipe carry no colour codes; the start line
//! names the address it really listens on.
mod support;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use support::stack::berth_bin;

fn berth_crd(env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(berth_bin());
    cmd.arg("crd")
        .env_remove("RUST_LOG")
        .env_remove("BERTH_LOG_FORMAT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run berth crd")
}

#[test]
fn an_unknown_log_level_stops_berth_with_a_message() {
    let out = berth_crd(&[("RUST_LOG", "verbose")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "nothing is printed after a refused configuration"
    );
    assert!(
        stderr.contains("RUST_LOG=\"verbose\": \"verbose\" is not a log level"),
        "{stderr}"
    );
    assert!(stderr.contains("e.g. RUST_LOG=info"), "{stderr}");
    // A level for a target is checked too.
    let out = berth_crd(&[("RUST_LOG", "berth=loud")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("RUST_LOG=\"berth=loud\""));
}

#[test]
fn an_unknown_log_format_stops_berth_with_a_message() {
    let out = berth_crd(&[("BERTH_LOG_FORMAT", "yaml")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("BERTH_LOG_FORMAT=\"yaml\" is not a log format: use text or json"),
        "{stderr}"
    );
}

#[test]
fn good_logging_settings_still_work() {
    for env in [
        &[("RUST_LOG", "berth=debug,info"), ("BERTH_LOG_FORMAT", "json")][..],
        &[("RUST_LOG", "warn")][..],
    ] {
        let out = berth_crd(env);
        assert!(
            out.status.success(),
            "{env:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("kind: CustomResourceDefinition"));
    }
}

/// The controller started with `--listen 127.0.0.1:0` and stderr to a pipe (as in a pod, under
/// systemd or redirected to a file): its log has no ANSI escape codes, and the start line gives
/// the port the kernel chose, which answers.
#[tokio::test]
async fn controller_logs_to_a_pipe_are_plain_and_name_the_real_port() {
    let client = support::admin_client().await;
    support::install_crd(&client).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("agent-token");
    std::fs::write(&token, "cli-logging-test-token").unwrap();
    let mut child = Command::new(berth_bin())
        .args(["controller", "--marathon-url", "http://127.0.0.1:9"])
        .args(["--agent", "node-1=http://127.0.0.1:9", "--agent-token-file"])
        .arg(&token)
        .args(["--listen", "127.0.0.1:0"])
        .env("KUBECONFIG", support::kubeconfig())
        .env("RUST_LOG", "info")
        .env_remove("BERTH_LOG_FORMAT")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start berth controller");
    let stderr = child.stderr.take().unwrap();
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = Vec::new();
    let mut serving = None;
    // Until the start line, or the controller stops, or a minute has passed (a safety net for a
    // controller that hangs: the assertions below then show its log).
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(60)) {
        let found = line.contains("serving /metrics");
        log.push(line);
        if found {
            serving = log.last().cloned();
            break;
        }
    }
    let text = log.join("\n");
    let serving = serving.unwrap_or_else(|| panic!("no start line in:\n{text}"));
    assert!(!text.contains('\u{1b}'), "colour codes in a pipe:\n{text:?}");
    let addr = serving
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .unwrap_or_else(|| panic!("no addr= in {serving:?}"));
    let port: u16 = addr
        .strip_prefix("127.0.0.1:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{addr} is not 127.0.0.1:PORT"));
    assert_ne!(port, 0, "{serving}");
    let health = reqwest::get(format!("http://{addr}/healthz")).await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        health.is_ok_and(|r| r.status().is_success()),
        "{addr} from the start line does not answer"
    );
}
