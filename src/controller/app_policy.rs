//! Apps berth never manages (pure).
//!
//! A volume is a way into an app's container: berth must not mount one into an app whose
//! container can reach the host, because whatever the volume holds (a tenant writes it) would
//! then run or be read with the host's privileges. So berth refuses:
//! - its own agent app and every app in the agent app's group (the agent is root on the host);
//! - apps whose Docker container is privileged, or whose Docker parameters give host access:
//!   `privileged`, `userns` (e.g. `--userns=host`), `pid`/`ipc`/`uts`/`cgroupns=host`,
//!   `net`/`network=host`, `cap-add`, `device`, `security-opt`, and the ways to mount host paths
//!   past berth (`volume`, `mount`, `volumes-from`).

use serde_json::Value;

use crate::marathon::App;

/// Docker parameters that give a container host access whatever their value.
const ALWAYS_HOST_ACCESS: &[&str] = &[
    "privileged",
    "userns",
    "cap-add",
    "device",
    "device-cgroup-rule",
    "security-opt",
    "volume",
    "v",
    "mount",
    "volumes-from",
];
/// Docker parameters that give host access with the value `host`.
const HOST_NAMESPACES: &[&str] = &["pid", "ipc", "uts", "cgroupns", "net", "network"];

/// The Marathon group an app id lies in (`/berth.system/agent` → `/berth.system`).
fn group_of(app_id: &str) -> &str {
    match app_id.trim_end_matches('/').rsplit_once('/') {
        Some((group, _)) if !group.is_empty() => group,
        _ => "/",
    }
}

/// Why berth refuses to manage `app`, if it does.
pub fn refusal(app: &App, agent_app: Option<&str>) -> Option<String> {
    if let Some(agent) = agent_app {
        let group = group_of(agent);
        let inside = group != "/" && app.id.starts_with(&format!("{}/", group.trim_end_matches('/')));
        if app.id == agent || inside {
            return Some(format!(
                "app {} is berth's own agent app or lies in its group {group}: berth never mounts volumes into it",
                app.id
            ));
        }
    }
    let docker = app.container.as_ref()?.docker.as_ref()?;
    if docker.extra.get("privileged").and_then(Value::as_bool) == Some(true) {
        return Some(format!(
            "app {} runs a privileged container, which can reach the host: berth does not mount volumes into it; \
             remove container.docker.privileged",
            app.id
        ));
    }
    let parameters = docker
        .extra
        .get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    for p in parameters {
        let key = p.get("key").and_then(Value::as_str).unwrap_or_default();
        let value = p.get("value").and_then(Value::as_str).unwrap_or_default();
        let key = key.trim_start_matches('-').to_ascii_lowercase();
        let host_access = ALWAYS_HOST_ACCESS.contains(&key.as_str())
            || (HOST_NAMESPACES.contains(&key.as_str()) && value.eq_ignore_ascii_case("host"));
        if host_access {
            return Some(format!(
                "app {} has the Docker parameter {key}={value}, which gives its container host access: berth does \
                 not mount volumes into it; remove the parameter",
                app.id
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn app(id: &str, docker: Value) -> App {
        serde_json::from_value(json!({"id": id, "container": {"type": "DOCKER", "docker": docker}})).unwrap()
    }

    #[test]
    fn the_agent_app_and_its_group_are_never_managed() {
        let plain = json!({"image": "busybox"});
        let agent = Some("/berth.system/agent");
        assert!(refusal(&app("/berth.system/agent", plain.clone()), agent).is_some());
        assert!(refusal(&app("/berth.system/other", plain.clone()), agent).is_some());
        assert!(refusal(&app("/berth.systemx/web", plain.clone()), agent).is_none());
        assert!(refusal(&app("/toto/web", plain.clone()), agent).is_none());
        // An agent app at the top level does not make every app its group's.
        assert!(refusal(&app("/toto/web", plain.clone()), Some("/agent")).is_none());
        assert!(refusal(&app("/agent", plain), Some("/agent")).is_some());
    }

    #[test]
    fn host_access_is_refused() {
        let refused = [
            json!({"image": "i", "privileged": true}),
            json!({"image": "i", "parameters": [{"key": "userns", "value": "host"}]}),
            json!({"image": "i", "parameters": [{"key": "pid", "value": "host"}]}),
            json!({"image": "i", "parameters": [{"key": "ipc", "value": "HOST"}]}),
            json!({"image": "i", "parameters": [{"key": "net", "value": "host"}]}),
            json!({"image": "i", "parameters": [{"key": "--network", "value": "host"}]}),
            json!({"image": "i", "parameters": [{"key": "cap-add", "value": "SYS_ADMIN"}]}),
            json!({"image": "i", "parameters": [{"key": "device", "value": "/dev/sda"}]}),
            json!({"image": "i", "parameters": [{"key": "volume", "value": "/:/host"}]}),
            json!({"image": "i", "parameters": [{"key": "security-opt", "value": "seccomp=unconfined"}]}),
        ];
        for d in refused {
            assert!(refusal(&app("/toto/web", d.clone()), None).is_some(), "{d}");
        }
        let fine = [
            json!({"image": "i"}),
            json!({"image": "i", "privileged": false}),
            json!({"image": "i", "parameters": [{"key": "user", "value": "1000:1000"}]}),
            json!({"image": "i", "parameters": [{"key": "net", "value": "bridge"}]}),
        ];
        for d in fine {
            assert!(refusal(&app("/toto/web", d.clone()), None).is_none(), "{d}");
        }
    }
}
