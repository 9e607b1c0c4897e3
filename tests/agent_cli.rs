//! `berth agent` as a process: start-up configuration (token, subuid/subgid files, hostname),
//! serving, and a clean stop on SIGTERM.

mod support_agent;

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use berth::agent::{
    api::{ContainerOwner, EnsureVolumeRequest, VolumeType},
    client::{AgentClient, AgentClientOptions},
};
use support_agent::{TOKEN, owner_of, require_root};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_healthy(port: u16, child: &mut Child) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the agent exited early: {status}");
        }
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await
            && r.status() == 200
        {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "agent did not become healthy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn agent_process_reads_token_and_remap_files_and_stops_on_sigterm() {
    require_root();
    berth::tls::install_crypto_provider();
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("containerdata");
    let subuid = tmp.path().join("subuid");
    let subgid = tmp.path().join("subgid");
    std::fs::write(&subuid, "someone:100000:65536\nberthremap:165536:65536\n").unwrap();
    std::fs::write(&subgid, "berthremap:200000:65536\n").unwrap();
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    // The Mesos agent's own attributes file, as `--attributes=file://...` would read it.
    let attributes = tmp.path().join("mesos-attributes");
    std::fs::write(&attributes, "rack:r2;cpus:4.0\n").unwrap();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["agent", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--token-file")
        .arg(&token_file)
        .arg("--root-template")
        .arg(format!("{}/user-{{tenant}}", base.display()))
        .args(["--hostname", "node-7", "--remap-user", "berthremap"])
        .arg(format!("--attributes=file://{}", attributes.display()))
        .arg("--subuid-file")
        .arg(&subuid)
        .arg("--subgid-file")
        .arg(&subgid)
        .env_remove("BERTH_AGENT_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_healthy(port, &mut child).await;
    let proc = Proc(child);
    let c = AgentClient::new(
        &format!("http://127.0.0.1:{port}"),
        TOKEN,
        &AgentClientOptions::default(),
    )
    .unwrap();
    let h = c.host_info().await.unwrap();
    assert_eq!(h.hostname, "node-7");
    assert_eq!(
        h.attributes,
        [
            ("cpus".to_owned(), "4".to_owned()),
            ("rack".to_owned(), "r2".to_owned())
        ]
        .into()
    );
    assert_eq!(h.root, base.display().to_string());
    assert_eq!(h.remap.uid_ranges[0].host_start, 165536);
    assert_eq!(h.remap.gid_ranges[0].host_start, 200000);
    let s = c
        .ensure_volume(&EnsureVolumeRequest {
            tenant: "toto".into(),
            host_path: "/data".into(),
            volume_type: VolumeType::Directory,
            owner: Some(ContainerOwner { uid: 1000, gid: 10 }),
            permissions: None,
            seed: None,
        })
        .await
        .unwrap();
    assert_eq!(owner_of(&base.join("user-toto/data")), (166536, 200010));
    assert_eq!(s.owner.container_gid, Some(10));
    // SIGTERM stops it cleanly (exit status 0).
    let mut child = proc;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.0.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
}

#[test]
fn agent_refuses_to_start_without_a_token_or_with_inconsistent_remap() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let template = format!("{}/user-{{tenant}}", tmp.path().join("cd").display());
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "agent",
            "--listen",
            "127.0.0.1:0",
            "--no-remap",
            "--root-template",
            &template,
        ])
        .env_remove("BERTH_AGENT_TOKEN")
        .env_remove("BERTH_AGENT_TOKEN_FILE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no token"), "{err}");

    let subuid = tmp.path().join("subuid");
    let subgid = tmp.path().join("subgid");
    std::fs::write(&subuid, "dockremap:165536:65536\n").unwrap();
    std::fs::write(&subgid, "other:165536:65536\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["agent", "--listen", "127.0.0.1:0", "--root-template", &template])
        .arg("--subuid-file")
        .arg(&subuid)
        .arg("--subgid-file")
        .arg(&subgid)
        .env("BERTH_AGENT_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has ranges in only one of"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "agent",
            "--listen",
            "127.0.0.1:0",
            "--no-remap",
            "--root-template",
            &template,
        ])
        .args(["--attributes", "rack"])
        .env("BERTH_AGENT_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--attributes: attribute \"rack\" has no value"),
        "{err}"
    );
}
