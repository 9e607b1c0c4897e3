//! Test support for the Helm chart in `charts/berth`: runs the real Helm engine (helm-sdkpy, through
//! `scripts/helm.py`, installed by `scripts/kube-test-env install`) and reads what it renders.
//!
//! Use it from a test binary with `mod support_helm;` (it needs nothing from `tests/support`).
//! [`chart_rbac`] gives the ClusterRole and Role rules the chart grants the controller, so a test
//! can give a static-token service account exactly the chart's permissions:
//!
//! ```ignore
//! let rbac = support_helm::chart_rbac(serde_json::json!({ "replicaCount": 2 }));
//! // rbac.cluster_rules: Vec<PolicyRule> for a ClusterRole (volumes, status, finalizers, events)
//! // rbac.namespaced_rules: Vec<PolicyRule> for a Role in the controller's namespace (leases;
//! //                        empty unless replicaCount > 1, i.e. leader election is on)
//! // or create them for system:serviceaccount:berth:berth in the test apiserver:
//! support_helm::apply_chart_rbac(&admin_client, serde_json::json!({ "replicaCount": 2 })).await;
//! ```
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_json::Value;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn chart_dir() -> PathBuf {
    repo_root().join("charts/berth")
}

/// The Python of the test environment (beside its kubectl), which has helm-sdkpy.
pub fn python() -> PathBuf {
    let out = Command::new(repo_root().join("scripts/kube-test-env"))
        .arg("kubectl")
        .output()
        .expect("run scripts/kube-test-env kubectl");
    let kubectl = PathBuf::from(String::from_utf8(out.stdout).expect("UTF-8 path").trim());
    let python = kubectl.with_file_name("python");
    assert!(
        python.exists(),
        "{} is missing: run `scripts/kube-test-env install` first (see README)",
        python.display()
    );
    python
}

/// `scripts/helm.py ARGS...` with the test environment's Python.
pub fn helm(args: &[&str]) -> Output {
    Command::new(python())
        .arg(repo_root().join("scripts/helm.py"))
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("run scripts/helm.py")
}

/// Like [`helm`], and panics with its stderr unless it succeeds.
pub fn helm_ok(args: &[&str]) -> String {
    let out = helm(args);
    assert!(
        out.status.success(),
        "scripts/helm.py {} failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Renders the chart (release `release` in `namespace`) with `values` merged over its defaults,
/// like `helm template`; returns the error text when the engine refuses the values.
pub fn try_template(release: &str, namespace: &str, values: &Value) -> Result<Vec<Value>, String> {
    let set = values.to_string();
    let chart = chart_dir();
    let out = helm(&[
        "template",
        release,
        chart.to_str().expect("UTF-8 path"),
        "-n",
        namespace,
        "--set-json",
        &set,
    ]);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(parse_manifest(
        &String::from_utf8(out.stdout).expect("UTF-8 manifest"),
    ))
}

/// [`try_template`], panicking when the engine refuses the values.
pub fn template(release: &str, namespace: &str, values: &Value) -> Vec<Value> {
    try_template(release, namespace, values).unwrap_or_else(|e| panic!("helm template failed: {e}"))
}

/// Splits a multi-document manifest into objects (empty documents dropped).
pub fn parse_manifest(manifest: &str) -> Vec<Value> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut flush = |doc: &mut String| {
        if doc
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        {
            let v: Value = serde_saphyr::from_str(doc).unwrap_or_else(|e| panic!("parse {doc}: {e}"));
            if !v.is_null() {
                docs.push(v);
            }
        }
        doc.clear();
    };
    for line in manifest.lines() {
        if line == "---" {
            flush(&mut current);
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    flush(&mut current);
    docs
}

/// The objects of one kind.
pub fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

/// The one object of a kind; panics unless there is exactly one.
pub fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found = of_kind(objects, kind);
    assert_eq!(found.len(), 1, "expected one {kind}, found {}", found.len());
    found[0]
}

/// The permissions the chart gives the controller's service account.
#[derive(Debug, Clone)]
pub struct ChartRbac {
    /// Rules of the chart's ClusterRole (bound cluster-wide).
    pub cluster_rules: Vec<PolicyRule>,
    /// Rules of the chart's Roles, bound in the release namespace (the leader-election Lease).
    pub namespaced_rules: Vec<PolicyRule>,
    /// Every RBAC object as rendered (ClusterRole, ClusterRoleBinding, Role, RoleBinding) for
    /// release `berth` in namespace `berth`, i.e. for `system:serviceaccount:berth:berth`.
    pub objects: Vec<Value>,
}

/// Renders the chart with `values` (release `berth`, namespace `berth`) and returns its RBAC.
pub fn chart_rbac(values: Value) -> ChartRbac {
    let objects = template("berth", "berth", &values);
    let rules = |kind: &str| -> Vec<PolicyRule> {
        of_kind(&objects, kind)
            .into_iter()
            .flat_map(|o| serde_json::from_value::<Vec<PolicyRule>>(o["rules"].clone()).expect("PolicyRules"))
            .collect()
    };
    ChartRbac {
        cluster_rules: rules("ClusterRole"),
        namespaced_rules: rules("Role"),
        objects: objects
            .iter()
            .filter(|o| {
                matches!(
                    o["kind"].as_str(),
                    Some("ClusterRole" | "ClusterRoleBinding" | "Role" | "RoleBinding")
                )
            })
            .cloned()
            .collect(),
    }
}

/// Installs (`verb` = "install") or upgrades the chart as `release` in `namespace` of the
/// apiserver behind `kubeconfig`, with `values` over the defaults. `take_ownership` adopts an
/// existing CRD (one created with `berth crd | kubectl create -f -`, or kept by another release).
/// `extra` is passed on, e.g. `["-f", "values.yaml"]` (applied before `values`).
pub fn release(
    verb: &str,
    kubeconfig: &Path,
    release: &str,
    namespace: &str,
    values: &Value,
    extra: &[&str],
) -> Result<String, String> {
    let set = values.to_string();
    let chart = chart_dir();
    let mut args = vec![
        verb,
        release,
        chart.to_str().expect("UTF-8 path"),
        "--kubeconfig",
        kubeconfig.to_str().expect("UTF-8 path"),
        "-n",
        namespace,
        "--set-json",
        &set,
        "--take-ownership",
    ];
    args.extend_from_slice(extra);
    let out = helm(&args);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Uninstalls `release` from `namespace`.
pub fn uninstall(kubeconfig: &Path, release: &str, namespace: &str) -> String {
    helm_ok(&[
        "uninstall",
        release,
        "--kubeconfig",
        kubeconfig.to_str().expect("UTF-8 path"),
        "-n",
        namespace,
    ])
}

/// Creates (or replaces) exactly the chart's RBAC in the apiserver of `client`, as rendered for
/// release `berth` in namespace `berth` with `values`: ClusterRole and ClusterRoleBinding `berth`
/// for service account `berth/berth` and, with `replicaCount` > 1, the Lease Role and RoleBinding
/// in namespace `berth` (created if missing). A controller that uses the static token of
/// `system:serviceaccount:berth:berth` then has the chart's permissions and no more.
/// [`apply_chart_rbac`] with the chart's defaults, once per test binary (tests run concurrently).
pub async fn grant_chart_rbac_once(client: &kube::Client) {
    static DONE: tokio::sync::Mutex<bool> = tokio::sync::Mutex::const_new(false);
    let mut done = DONE.lock().await;
    if !*done {
        apply_chart_rbac(client, serde_json::json!({})).await;
        *done = true;
    }
}

pub async fn apply_chart_rbac(client: &kube::Client, values: Value) -> ChartRbac {
    use k8s_openapi::api::{
        core::v1::Namespace,
        rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
    };
    use kube::{Api, api::PostParams};

    async fn put<K>(api: Api<K>, object: &Value)
    where
        K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + serde::Serialize,
    {
        let mut typed: K = serde_json::from_value(object.clone()).expect("an RBAC object");
        let name = object["metadata"]["name"].as_str().expect("a name").to_string();
        match api.create(&PostParams::default(), &typed).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let current = api.get(&name).await.expect("get the existing object");
                typed.meta_mut().resource_version = current.meta().resource_version.clone();
                api.replace(&name, &PostParams::default(), &typed)
                    .await
                    .expect("replace the RBAC object");
            }
            Err(e) => panic!("create {name}: {e}"),
        }
    }

    let rbac = chart_rbac(values);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": "berth"}})).unwrap();
    match namespaces.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("create namespace berth: {e}"),
    }
    for object in &rbac.objects {
        match object["kind"].as_str() {
            Some("ClusterRole") => put(Api::<ClusterRole>::all(client.clone()), object).await,
            Some("ClusterRoleBinding") => put(Api::<ClusterRoleBinding>::all(client.clone()), object).await,
            Some("Role") => put(Api::<Role>::namespaced(client.clone(), "berth"), object).await,
            Some("RoleBinding") => put(Api::<RoleBinding>::namespaced(client.clone(), "berth"), object).await,
            _ => {}
        }
    }
    rbac
}
