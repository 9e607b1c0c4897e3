//! The agent's deployment files: the systemd unit's sandbox (scored by `systemd-analyze
//! security`), and the Marathon app's container run with real Docker the way Mesos would run it,
//! unprivileged, giving a volume a remapped owner and seeing mounts made on the host after it
//! started (the data root is mounted `rslave`).

mod support_agent;

use std::{
    path::PathBuf,
    process::{Command, Output},
    time::{Duration, Instant},
};

use berth::agent::{
    api::{ContainerOwner, EnsureVolumeRequest, VolumeType},
    client::{AgentClient, AgentClientOptions},
};
use serde_json::Value;
use support_agent::{MountGuard, TOKEN, make_certs, owner_of, process::free_port, require_root};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn the_systemd_unit_is_sandboxed() {
    let unit = repo().join("deploy/agent/berth-agent.service");
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian's systemd package) is needed to score the unit");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for berth-agent.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no score in:\n{text}"));
    eprintln!("systemd-analyze security: berth-agent.service scores {score}");
    // 8.3 ("EXPOSED") before hardening.
    assert!(score <= 3.0, "the unit scores {score}:\n{text}");
    let unit = std::fs::read_to_string(&unit).unwrap();
    assert!(
        unit.contains(
            "CapabilityBoundingSet=CAP_CHOWN CAP_FOWNER CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_FSETID CAP_SYS_ADMIN\n"
        ),
        "{unit}"
    );
    assert!(unit.contains("ReadWritePaths=/containerdata\n"));
    // RestrictSUIDSGID's seccomp filter answers ENOSYS to openat2, which every lookup needs.
    assert!(!unit.contains("\nRestrictSUIDSGID=yes"), "{unit}");
}

/// The Marathon app definition, read as Marathon would hand it to Mesos.
fn marathon_app() -> Value {
    let text = std::fs::read_to_string(repo().join("deploy/agent/marathon-app.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn the_agent_app_is_unprivileged_in_a_group_no_namespace_can_be_named_after() {
    let app = marathon_app();
    let id = app["id"].as_str().unwrap();
    let group = id.trim_start_matches('/').split('/').next().unwrap();
    // Namespaces are DNS labels: no dots. A tenant's group is named after its namespace.
    assert!(group.contains('.'), "{id}");
    assert!(berth::tenant::MarathonAppId::parse(id).is_ok(), "{id}");
    let docker = &app["container"]["docker"];
    assert_eq!(docker["privileged"], Value::Bool(false));
    let params: Vec<(String, String)> = docker["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["key"].as_str().unwrap().into(),
                p["value"].as_str().unwrap().into(),
            )
        })
        .collect();
    let has = |k: &str, v: &str| params.iter().any(|(pk, pv)| pk == k && pv == v);
    assert!(has("userns", "host") && has("cap-drop", "ALL"), "{params:?}");
    assert!(
        has("volume", "/containerdata:/containerdata:rw,rslave"),
        "{params:?}"
    );
    // The data root is not also a Marathon host volume (that would be mounted rprivate).
    let volumes = app["container"]["volumes"].as_array().unwrap();
    assert!(
        volumes.iter().all(|v| v["hostPath"] != "/containerdata"),
        "{volumes:?}"
    );
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("run the docker CLI")
}

/// Removes the container and the image on drop.
struct Cleanup {
    container: String,
    image: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        docker(&["rm", "-f", &self.container]);
        docker(&["image", "rm", "-f", &self.image]);
    }
}

/// `docker run` arguments for the app, as Mesos' Docker containerizer builds them: host
/// networking, `-v host:container:mode` per host volume, `--key=value` per parameter, and the
/// `cmd` through `/bin/sh -c`. `host_path` maps the app's host paths to this test's.
fn docker_run_args(
    app: &Value,
    name: &str,
    image: &str,
    host_path: &dyn Fn(&str) -> String,
    cmd: &str,
) -> Vec<String> {
    let mut args = vec!["run".to_owned(), "-d".into(), "--name".into(), name.into()];
    if app["networks"][0]["mode"] == "host" {
        args.push("--net=host".into());
    }
    let docker = &app["container"]["docker"];
    if docker["privileged"] == Value::Bool(true) {
        args.push("--privileged".into());
    }
    for v in app["container"]["volumes"].as_array().unwrap() {
        let mode = if v["mode"] == "RO" { "ro" } else { "rw" };
        args.push("-v".into());
        args.push(format!(
            "{}:{}:{mode}",
            host_path(v["hostPath"].as_str().unwrap()),
            v["containerPath"].as_str().unwrap()
        ));
    }
    for p in docker["parameters"].as_array().unwrap() {
        let (k, v) = (p["key"].as_str().unwrap(), p["value"].as_str().unwrap());
        let v = if k == "volume" {
            let (src, rest) = v.split_once(':').unwrap();
            format!("{}:{rest}", host_path(src))
        } else {
            v.to_owned()
        };
        args.push(format!("--{k}={v}"));
    }
    args.extend(["-e".into(), "HOST=agent-test-host".into()]);
    args.extend([
        "--entrypoint".into(),
        "/bin/sh".into(),
        image.into(),
        "-c".into(),
        cmd.into(),
    ]);
    args
}

#[tokio::test]
async fn the_agent_app_runs_unprivileged_in_docker_chowns_and_sees_later_mounts() {
    require_root();
    berth::tls::install_crypto_provider();
    let tmp = tempfile::Builder::new()
        .prefix("berth-agent-app")
        .tempdir()
        .unwrap();
    let t = tmp.path();
    // The host's files: a data root on a shared mount (as / is on systemd hosts; rslave needs a
    // shared or slave source), the remap ranges, the token and TLS files.
    let data = t.join("containerdata");
    std::fs::create_dir(&data).unwrap();
    run(Command::new("mount").arg("--bind").arg(&data).arg(&data));
    let _data_mount = MountGuard(data.clone());
    run(Command::new("mount").arg("--make-shared").arg(&data));
    let etc = t.join("etc");
    std::fs::create_dir_all(etc.join("berth")).unwrap();
    std::fs::write(etc.join("subuid"), "dockremap:165536:65536\n").unwrap();
    std::fs::write(etc.join("subgid"), "dockremap:165536:65536\n").unwrap();
    std::fs::write(etc.join("berth/agent.token"), format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(
        etc.join("berth/agent.token"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    make_certs(&etc.join("berth"));
    let decoy = t.join("decoy");
    std::fs::create_dir_all(decoy.join("inside")).unwrap();

    let image = format!("berth-local/berth:agent-app-test-{}", std::process::id());
    let name = format!("berth-agent-app-test-{}", std::process::id());
    let built = run(Command::new(repo().join("scripts/image")).args([
        "build",
        "--binary",
        env!("CARGO_BIN_EXE_berth"),
        "--tag",
        &image,
    ]));
    let _cleanup = Cleanup {
        container: name.clone(),
        image: image.clone(),
    };
    assert_eq!(String::from_utf8_lossy(&built.stdout).trim(), image);

    let app = marathon_app();
    let port = free_port();
    let cmd = app["cmd"]
        .as_str()
        .unwrap()
        .replace("0.0.0.0:8443", &format!("127.0.0.1:{port}"));
    let host_path = |p: &str| match p {
        "/containerdata" => data.display().to_string(),
        "/etc/subuid" | "/etc/subgid" => etc.join(&p[5..]).display().to_string(),
        "/etc/berth" => etc.join("berth").display().to_string(),
        other => other.to_owned(),
    };
    let args = docker_run_args(&app, &name, &image, &host_path, &cmd);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = docker(&args);
    assert!(
        out.status.success(),
        "docker run: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let inspect = docker(&[
        "inspect",
        "-f",
        "{{.HostConfig.Privileged}} {{json .HostConfig.CapAdd}}",
        &name,
    ]);
    let inspected = String::from_utf8_lossy(&inspect.stdout).trim().to_owned();
    assert!(inspected.starts_with("false "), "{inspected}");

    let ca = std::fs::read(etc.join("berth/ca.pem")).unwrap();
    let client = AgentClient::new(
        &format!("https://127.0.0.1:{port}"),
        TOKEN,
        &AgentClientOptions {
            ca_pem: Some(ca),
            timeout: Duration::from_secs(10),
            ..Default::default()
        },
    )
    .unwrap();
    let start = Instant::now();
    let host = loop {
        match client.host_info().await {
            Ok(h) => break h,
            Err(_) if start.elapsed() < Duration::from_secs(60) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                let logs = docker(&["logs", &name]);
                panic!(
                    "the agent in the container never answered: {e}\n{}",
                    String::from_utf8_lossy(&logs.stderr)
                );
            }
        }
    };
    assert_eq!(host.hostname, "agent-test-host");
    assert_eq!(host.remap.uid_ranges[0].host_start, 165536);

    // It gives a volume a remapped owner: CAP_CHOWN without privileged mode.
    let req = EnsureVolumeRequest {
        tenant: "toto".into(),
        host_path: "/data".into(),
        volume_type: VolumeType::Directory,
        owner: Some(ContainerOwner { uid: 1000, gid: 1000 }),
        permissions: Some("0750".into()),
        seed: None,
    };
    let s = client.ensure_volume(&req).await.unwrap();
    assert!(s.created);
    assert_eq!(owner_of(&data.join("user-toto/data")), (166536, 166536));
    let mut file = req.clone();
    file.host_path = "/etc/app.conf".into();
    file.volume_type = VolumeType::File;
    file.permissions = Some("0640".into());
    client.ensure_volume(&file).await.unwrap();
    assert_eq!(owner_of(&data.join("user-toto/etc/app.conf")), (166536, 166536));

    // A mount made on the host after the agent started reaches it (rslave): the agent refuses to
    // create through it instead of writing below it, unseen by the host.
    let mnt = data.join("user-toto/srv/mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    run(Command::new("mount").arg("--bind").arg(&decoy).arg(&mnt));
    let _mnt = MountGuard(mnt.clone());
    let mut through = req.clone();
    through.host_path = "/srv/mnt/new".into();
    let e = client.ensure_volume(&through).await.unwrap_err();
    assert_eq!(e.code(), Some("mount_point"), "{e}");
    assert!(!decoy.join("new").exists());
    let logs = docker(&["logs", &name]);
    eprintln!(
        "agent app container: privileged/caps {inspected}\n{}",
        String::from_utf8_lossy(&logs.stderr).lines().next().unwrap_or("")
    );
}
