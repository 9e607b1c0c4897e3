//! `berth agent` as a process: start-up configuration (token, subuid/subgid files, hostname),
//! what it refuses at start, serving, per-host tokens, and a clean stop on SIGTERM.

mod support_agent;

use std::{ffi::OsStr, os::unix::fs::PermissionsExt, process::Command, time::Duration};

use berth::agent::{
    api::{ContainerOwner, EnsureVolumeRequest, VolumeType},
    client::{AgentClient, AgentClientOptions},
    credentials::host_token,
};
use support_agent::{
    TOKEN, mode_of, owner_of,
    process::{agent_command, expect_refusal, free_port, start},
    require_root,
};

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
    // Readable by others: the agent starts, and warns.
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    // The Mesos agent's own attributes file, as `--attributes=file://...` would read it.
    let attributes = tmp.path().join("mesos-attributes");
    std::fs::write(&attributes, "rack:r2;cpus:4.0\n").unwrap();
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args(["agent", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--token-file")
        .arg(&token_file)
        .arg("--root-template")
        .arg(format!("{}/user-{{tenant}}", base.display()))
        // The root does not exist yet: created because it is asked for.
        .arg("--create-root")
        .args(["--hostname", "node-7", "--remap-user", "berthremap"])
        .arg(format!("--attributes=file://{}", attributes.display()))
        .arg("--subuid-file")
        .arg(&subuid)
        .arg("--subgid-file")
        .arg(&subgid)
        .env_remove("BERTH_AGENT_TOKEN");
    let mut proc = start(cmd, port, &tmp.path().join("agent.log")).await;
    assert_eq!(owner_of(&base), (0, 0));
    assert_eq!(mode_of(&base), 0o755);
    let log = proc.log_text();
    assert!(
        log.contains(&format!(
            "the token file {} has mode 0644: group or others can read it",
            token_file.display()
        )),
        "{log}"
    );
    assert!(
        log.contains("berth agent-token --secret-file SECRET --host node-7"),
        "{log}"
    );
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
    proc.signal(rustix::process::Signal::TERM);
    let (status, _) = proc.wait_exit(Duration::from_secs(20)).await;
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

/// `berth agent` with a token, `--listen 127.0.0.1:0` and `args`.
fn agent(args: &[&str]) -> Command {
    let os: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    agent_command(0, &os)
}

#[test]
fn risky_flags_are_refused_at_start_with_the_fix_in_the_message() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("containerdata");
    std::fs::create_dir(&base).unwrap();
    let template = format!("{}/user-{{tenant}}", base.display());

    // A typo in the template: the directory holding the tenant roots does not exist. Before,
    // it was created from / down, putting tenant data on the root filesystem.
    let typo = format!("{}/user-{{tenant}}", tmp.path().join("contianerdata").display());
    let err = expect_refusal(agent(&["--no-remap", "--root-template", &typo]));
    assert!(
        err.contains("contianerdata that holds the tenant roots does not exist"),
        "{err}"
    );
    assert!(err.contains("--create-root"), "{err}");
    assert!(!tmp.path().join("contianerdata").exists(), "created anyway");

    // The agent root must be root's and not writable by others.
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = expect_refusal(agent(&["--no-remap", "--root-template", &template]));
    assert!(
        err.contains("with mode 0777") && err.contains("chmod go-w"),
        "{err}"
    );
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();

    // A remap user without ranges: before, a warning and no remap at all.
    let subuid = tmp.path().join("subuid");
    let subgid = tmp.path().join("subgid");
    std::fs::write(&subuid, "dockremap:165536:65536\n").unwrap();
    std::fs::write(&subgid, "dockremap:165536:65536\n").unwrap();
    let files = |user: &str| {
        let mut c = agent(&["--root-template", &template, "--remap-user", user]);
        c.arg("--subuid-file")
            .arg(&subuid)
            .arg("--subgid-file")
            .arg(&subgid);
        c
    };
    let err = expect_refusal(files("nosuchuser"));
    assert!(
        err.contains("the remap user \"nosuchuser\" has no ranges"),
        "{err}"
    );
    assert!(err.contains("--no-remap"), "{err}");
    let mut missing = agent(&["--root-template", &template]);
    missing
        .arg("--subuid-file")
        .arg(tmp.path().join("nope"))
        .arg("--subgid-file")
        .arg(&subgid);
    let err = expect_refusal(missing);
    assert!(
        err.contains("nope does not exist") && err.contains("--no-remap"),
        "{err}"
    );

    // A seed file that does not exist.
    let err = expect_refusal(agent(&[
        "--no-remap",
        "--root-template",
        &template,
        "--seed-allow",
        "/etc/no-such-seed-file",
    ]));
    assert!(
        err.contains("--seed-allow /etc/no-such-seed-file")
            && err.contains("remove the flag or create the file"),
        "{err}"
    );

    // Ranges of zero ids, and flag errors in the flag's own format (not "line 1").
    let err = expect_refusal(agent(&[
        "--root-template",
        &template,
        "--uid-map",
        "165536:0",
        "--gid-map",
        "165536:65536",
    ]));
    assert!(
        err.contains("--uid-map \"165536:0\": COUNT must be at least 1"),
        "{err}"
    );
    assert!(err.contains("START:COUNT[,START:COUNT...]"), "{err}");
    let err = expect_refusal(agent(&[
        "--root-template",
        &template,
        "--uid-map",
        "165536",
        "--gid-map",
        "165536:65536",
    ]));
    assert!(
        err.contains("--uid-map \"165536\": a range must be START:COUNT"),
        "{err}"
    );
    assert!(!err.contains("line"), "{err}");
    // Errors in the files name the file and the line.
    std::fs::write(&subuid, "# ranges\ndockremap:165536:0\n").unwrap();
    let err = expect_refusal(files("dockremap"));
    assert!(
        err.contains(&format!("{} line 2: count must be at least 1", subuid.display())),
        "{err}"
    );
}

#[tokio::test]
async fn a_token_derived_for_one_host_works_on_that_host_only() {
    require_root();
    berth::tls::install_crypto_provider();
    let tmp = tempfile::tempdir().unwrap();
    let secret = tmp.path().join("agent-secret");
    std::fs::write(&secret, "correct-horse-battery-staple-0123\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let derive = |host: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["agent-token", "--secret-file"])
            .arg(&secret)
            .args(["--host", host])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (
            String::from_utf8(out.stdout).unwrap().trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (node7, warn) = derive("node-7");
    assert!(warn.is_empty(), "{warn}");
    // The same value as the library (and as `openssl dgst -sha256 -hmac`, see its unit test).
    assert_eq!(node7, host_token(b"correct-horse-battery-staple-0123", "node-7"));
    let (node8, _) = derive("node-8");
    assert_ne!(node7, node8);
    // The agent of node-7 holds node-7's token only.
    let base = tmp.path().join("containerdata");
    std::fs::create_dir(&base).unwrap();
    let token_file = tmp.path().join("agent.token");
    std::fs::write(&token_file, format!("{node7}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let port = free_port();
    let template = format!("{}/user-{{tenant}}", base.display());
    let args: Vec<&OsStr> = vec![
        OsStr::new("--no-remap"),
        OsStr::new("--hostname"),
        OsStr::new("node-7"),
        OsStr::new("--root-template"),
        OsStr::new(&template),
        OsStr::new("--token-file"),
        token_file.as_os_str(),
    ];
    let proc = start(agent_command(port, &args), port, &tmp.path().join("agent.log")).await;
    assert!(
        !proc.log_text().contains("group or others can read it"),
        "a 0600 token file is not warned about"
    );
    let client = |token: &str| AgentClient::new(&proc.url(), token, &AgentClientOptions::default()).unwrap();
    assert_eq!(client(&node7).host_info().await.unwrap().hostname, "node-7");
    let e = client(&node8).host_info().await.unwrap_err();
    assert_eq!(e.code(), Some("unauthorized"), "{e}");
    // A secret others can read is worth a warning; a short one is refused.
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (_, warn) = derive("node-7");
    assert!(
        warn.contains("has mode 0644") && warn.contains("chmod 600"),
        "{warn}"
    );
    std::fs::write(&secret, "short").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["agent-token", "--secret-file"])
        .arg(&secret)
        .args(["--host", "node-7"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 16"));
}
