//! The `marathon-sim` binary serves Marathon's API for the agents given on its command line.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// Kills the child even when an assertion fails.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn binary_serves_the_configured_agents() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_marathon-sim"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--agent",
                "host=node-1,id=S1,attr.rack=r1,disk=500",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("binary starts"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .unwrap()
    .unwrap();
    let url = line.trim().rsplit(' ').next().expect("url").to_string();
    let http = reqwest::Client::new();
    let agents: serde_json::Value = http
        .get(format!("{url}/_sim/agents"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let agent = &agents["agents"][0];
    assert_eq!(agent["hostname"], "node-1");
    assert_eq!(agent["id"], "S1");
    assert_eq!(agent["attributes"]["rack"], "r1");
    assert_eq!(agent["diskMb"], 500.0);
    let ping = http
        .get(format!("{url}/ping"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(ping, "pong");
}

#[test]
fn binary_rejects_a_bad_agent_spec() {
    let output = Command::new(env!("CARGO_BIN_EXE_marathon-sim"))
        .args(["--listen", "127.0.0.1:0", "--agent", "id=S1"])
        .output()
        .expect("binary runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("host=<hostname>"));
}
