//! GitOps: the example volumes and their kustomization, applied with kubectl to the real
//! kube-apiserver; and the Argo CD health check (`docs/argocd-health.lua`) run by a real Lua 5.1
//! interpreter (the dialect of Argo CD's gopher-lua) on StatefulLocalVolumes in every state.
mod support;

use std::{
    path::{Component, Path, PathBuf},
    process::Command,
};

use berth::crd::StatefulLocalVolume;
use kube::{Api, api::ListParams};
use serde_json::{Value, json};

// --- examples and kustomization -------------------------------------------------------------

fn examples_dir() -> PathBuf {
    support::repo_root().join("examples")
}

fn example_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(examples_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    files.sort();
    files
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run kubectl");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `to` relative to `from` (both absolute), for kustomize, which refuses absolute resources.
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for c in &to[common..] {
        out.push(c.as_os_str());
    }
    out
}

#[test]
fn the_kustomization_lists_every_example() {
    let kustomization: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(examples_dir().join("kustomization.yaml")).unwrap())
            .unwrap();
    let mut listed: Vec<String> =
        serde_json::from_value(kustomization["resources"].clone()).expect("resources");
    listed.sort();
    assert_eq!(
        listed,
        example_files(),
        "examples/kustomization.yaml must list every example"
    );

    let built = run(support::kubectl().arg("kustomize").arg(examples_dir()));
    assert_eq!(
        built.matches("kind: StatefulLocalVolume").count(),
        example_files().len()
    );
    assert_eq!(built.matches("namespace: toto").count(), example_files().len());
}

/// An overlay of `examples/` (as a GitOps repository would have) into a fresh namespace,
/// applied with kubectl: the apiserver accepts every example, and they read back as written.
#[tokio::test]
async fn every_example_applies_through_an_overlay() {
    let client = support::admin_client().await;
    support::install_crd(&client).await;
    let ns = support::namespace(&client, "examples").await;

    let overlay = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("overlay-{ns}"));
    std::fs::create_dir_all(&overlay).unwrap();
    std::fs::write(
        overlay.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: {ns}\nresources:\n  - {}\n",
            relative(&overlay, &examples_dir()).display()
        ),
    )
    .unwrap();
    // With kubectl's schema validation on, as users should apply them (it catches typos).
    let out = run(support::kubectl().args(["apply", "-k"]).arg(&overlay));
    assert_eq!(out.matches("created").count(), example_files().len(), "{out}");
    std::fs::remove_dir_all(&overlay).unwrap();

    let slvs: Api<StatefulLocalVolume> = Api::namespaced(client.clone(), &ns);
    let list = slvs.list(&ListParams::default()).await.unwrap();
    let mut names: Vec<String> = list
        .items
        .iter()
        .map(|v| v.metadata.name.clone().unwrap())
        .collect();
    names.sort();
    let mut expected: Vec<String> = example_files()
        .iter()
        .map(|f| f.trim_end_matches(".yaml").to_string())
        .collect();
    expected.sort();
    assert_eq!(names, expected, "each example file holds the volume of its name");

    let localtime = serde_json::to_value(slvs.get("localtime").await.unwrap()).unwrap();
    assert_eq!(localtime["spec"]["type"], "File");
    assert_eq!(localtime["spec"]["seed"]["copyFromHost"], "/etc/localtime");
    assert_eq!(
        localtime["metadata"]["labels"]["app.kubernetes.io/part-of"],
        "berth-examples"
    );
    let scratch = serde_json::to_value(slvs.get("batch-scratch").await.unwrap()).unwrap();
    assert_eq!(scratch["spec"]["reclaimPolicy"], "Delete");
    assert_eq!(scratch["spec"]["placement"]["host"], "node-2");

    // Applying the same folder again changes nothing (what a GitOps sync loop does).
    let overlay2 = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("overlay2-{ns}"));
    std::fs::create_dir_all(&overlay2).unwrap();
    std::fs::write(
        overlay2.join("kustomization.yaml"),
        format!(
            "namespace: {ns}\nresources:\n  - {}\n",
            relative(&overlay2, &examples_dir()).display()
        ),
    )
    .unwrap();
    let again = run(support::kubectl().args(["apply", "-k"]).arg(&overlay2));
    std::fs::remove_dir_all(&overlay2).unwrap();
    assert_eq!(
        again.matches("unchanged").count(),
        example_files().len(),
        "{again}"
    );
}

// --- Argo CD health check ------------------------------------------------------------------

/// A JSON value as a Lua 5.1 table constructor (null becomes nil, as in Argo CD).
fn lua_literal(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let mut out = String::from("\"");
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    c if (c as u32) < 0x20 => out.push_str(&format!("\\{}", c as u32)),
                    c => out.push(c),
                }
            }
            out.push('"');
            out
        }
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(lua_literal).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!(
                    "[{}] = {}",
                    lua_literal(&Value::String(k.clone())),
                    lua_literal(v)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Runs docs/argocd-health.lua on `obj` with lua5.1; returns (status, message).
fn health(obj: &Value) -> (String, String) {
    let script = support::repo_root().join("docs/argocd-health.lua");
    let harness = format!(
        "obj = {}\nlocal hs = dofile({})\nio.write(hs.status, \"\\n\", hs.message or \"\", \"\\n\")\n",
        lua_literal(obj),
        lua_literal(&Value::String(script.display().to_string()))
    );
    let out = Command::new("lua5.1")
        .arg("-e")
        .arg(&harness)
        .output()
        .expect("run lua5.1 (installed by scripts/kube-test-env install)");
    assert!(
        out.status.success(),
        "lua failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    (
        lines.next().unwrap_or_default().to_string(),
        lines.next().unwrap_or_default().to_string(),
    )
}

fn volume(generation: i64, status: Value) -> Value {
    json!({
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "StatefulLocalVolume",
        "metadata": {"name": "web-data", "namespace": "toto", "generation": generation},
        "spec": {"app": "/toto/web", "containerPath": "/data", "hostPath": "/data"},
        "status": status,
    })
}

fn cond(kind: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({"type": kind, "status": status, "reason": reason, "message": message,
           "lastTransitionTime": "2026-01-01T00:00:00Z"})
}

#[test]
fn ready_and_observed_is_healthy() {
    let obj = volume(
        3,
        json!({"phase": "Bound", "host": "node-3", "observedGeneration": 3,
               "conditions": [cond("Ready", "True", "Bound", "provisioned and pinned")]}),
    );
    assert_eq!(health(&obj), ("Healthy".into(), "Bound on node-3".into()));
}

#[test]
fn a_spec_not_yet_observed_is_progressing_even_if_ready() {
    let obj = volume(
        4,
        json!({"phase": "Bound", "observedGeneration": 3,
               "conditions": [cond("Ready", "True", "Bound", "")]}),
    );
    assert_eq!(health(&obj).0, "Progressing");
    // No status at all yet (the controller has not seen the volume).
    let mut fresh = volume(1, Value::Null);
    fresh.as_object_mut().unwrap().remove("status");
    assert_eq!(health(&fresh).0, "Progressing");
    // A status without observedGeneration.
    let obj = volume(1, json!({"conditions": [cond("Ready", "True", "Bound", "")]}));
    assert_eq!(health(&obj).0, "Progressing");
}

#[test]
fn stalled_is_degraded_with_the_reason() {
    let obj = volume(
        2,
        json!({"phase": "Failed", "observedGeneration": 2, "conditions": [
            cond("Ready", "False", "InvalidSpec", "app /titi/web is outside tenant toto's group /toto"),
            cond("Stalled", "True", "InvalidSpec", "app /titi/web is outside tenant toto's group /toto"),
        ]}),
    );
    let (status, message) = health(&obj);
    assert_eq!(status, "Degraded");
    assert_eq!(
        message,
        "InvalidSpec: app /titi/web is outside tenant toto's group /toto"
    );
    // Stalled about an older generation: the fix is not observed yet, so not Degraded.
    let mut fixed = obj.clone();
    fixed["metadata"]["generation"] = json!(3);
    assert_eq!(health(&fixed).0, "Progressing");
}

#[test]
fn not_ready_is_progressing_with_the_reason() {
    for (conditions, expected_message) in [
        (
            json!([cond("Ready", "False", "Provisioning", "waiting for agent node-2")]),
            "Provisioning: waiting for agent node-2",
        ),
        (json!([cond("Ready", "Unknown", "Pending", "")]), "Pending"),
        (json!([]), "Waiting for the Ready condition"),
        (
            json!([
                cond("Ready", "True", "Bound", ""),
                cond("Reconciling", "True", "Migrating", "to node-1")
            ]),
            "Migrating: to node-1",
        ),
        (
            json!([
                cond("Ready", "False", "Provisioning", "x"),
                cond("Stalled", "False", "Ok", "")
            ]),
            "Provisioning: x",
        ),
    ] {
        let obj = volume(1, json!({"observedGeneration": 1, "conditions": conditions}));
        assert_eq!(
            health(&obj),
            ("Progressing".into(), expected_message.into()),
            "{conditions}"
        );
    }
}

#[test]
fn being_deleted_is_progressing() {
    let mut obj = volume(
        2,
        json!({"phase": "Bound", "observedGeneration": 2, "conditions": [cond("Ready", "True", "Bound", "")]}),
    );
    obj["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    let (status, message) = health(&obj);
    assert_eq!(status, "Progressing");
    assert!(message.contains("deleted"), "{message}");
}
