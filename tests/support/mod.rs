//! Test support: a real kube-apiserver v1.20.2 and etcd (see `scripts/kube-test-env`).
//!
//! One server is shared by all tests of a test binary; each test builds its own `kube::Client`
//! (a client is bound to the Tokio runtime that created it, and every `#[tokio::test]` has its
//! own) and works in its own namespace. Set `BERTH_TEST_KUBECONFIG` to use a server that is
//! already running (the test script does this, so every binary shares one).
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use berth::crd::StatefulLocalVolume;
use k8s_openapi::{
    api::core::v1::Namespace, apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Config, ResourceExt,
    api::{ObjectMeta, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};

pub mod docker_hosts;
pub mod loopfs;
pub mod stack;

/// Tests that create files owned by other users, mount and chown need root.
pub fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root: it works on the real filesystem as the agent does (run it as root, like CI)"
    );
}

/// Static token of the cluster admin, as written by `scripts/kube-test-env`.
pub const ADMIN_TOKEN: &str = "admintoken";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The kubeconfig of the shared test apiserver, starting one for this test binary if needed.
pub fn kubeconfig() -> &'static Path {
    static KUBECONFIG: OnceLock<PathBuf> = OnceLock::new();
    KUBECONFIG.get_or_init(|| {
        if let Some(path) = std::env::var_os("BERTH_TEST_KUBECONFIG") {
            return PathBuf::from(path);
        }
        let dir = std::env::temp_dir().join(format!("berth-kube-{}", std::process::id()));
        let status = Command::new(repo_root().join("scripts/kube-test-env"))
            .arg("start")
            .arg(&dir)
            .arg("--watch-pid")
            .arg(std::process::id().to_string())
            .status()
            .expect("run scripts/kube-test-env");
        assert!(
            status.success(),
            "could not start kube-apiserver: run `scripts/kube-test-env install` first (see README)"
        );
        dir.join("kubeconfig")
    })
}

/// A client for the shared apiserver, as cluster admin.
pub async fn admin_client() -> Client {
    berth::tls::install_crypto_provider();
    let kubeconfig = Kubeconfig::read_from(kubeconfig()).expect("read the test kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("load the test kubeconfig");
    Client::try_from(config).expect("build a kube client")
}

/// Static token of the user `tenant`, as written by `scripts/kube-test-env`.
pub const TENANT_TOKEN: &str = "tenanttoken";

/// A client for the user `tenant`, after granting it what a tenant's admin has in namespace `ns`
/// only: everything on StatefulLocalVolumes there, their status included.
pub async fn tenant_client(ns: &str) -> Client {
    use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
    let admin = admin_client().await;
    let role = Role {
        metadata: ObjectMeta {
            name: Some("slv-admin".into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["berth.dev".into()]),
            resources: Some(vec![
                "statefullocalvolumes".into(),
                "statefullocalvolumes/status".into(),
            ]),
            verbs: vec!["*".into()],
            ..Default::default()
        }]),
    };
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some("slv-admin-tenant".into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: "slv-admin".into(),
        },
        subjects: Some(vec![Subject {
            kind: "User".into(),
            name: "tenant".into(),
            api_group: Some("rbac.authorization.k8s.io".into()),
            ..Default::default()
        }]),
    };
    Api::<Role>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &role)
        .await
        .expect("create the tenant's Role");
    Api::<RoleBinding>::namespaced(admin, ns)
        .create(&PostParams::default(), &binding)
        .await
        .expect("bind the tenant's Role");
    let text = std::fs::read_to_string(kubeconfig()).expect("read the test kubeconfig");
    let kubeconfig = Kubeconfig::from_yaml(&text.replace(
        &format!("token: {ADMIN_TOKEN}"),
        &format!("token: {TENANT_TOKEN}"),
    ))
    .expect("a kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("load the tenant's kubeconfig");
    Client::try_from(config).expect("build a kube client")
}

/// A `StatefulLocalVolume` named `name` with this spec; its namespace is the one of the `Api` it
/// is created through.
pub fn volume(name: &str, spec: serde_json::Value) -> StatefulLocalVolume {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "StatefulLocalVolume",
        "metadata": {"name": name}, "spec": spec,
    }))
    .expect("a StatefulLocalVolume")
}

/// Creates [`volume`]`(name, spec)` through `api`.
pub async fn create_volume(api: &Api<StatefulLocalVolume>, name: &str, spec: serde_json::Value) {
    api.create(&PostParams::default(), &volume(name, spec))
        .await
        .unwrap_or_else(|e| panic!("create volume {name}: {e}"));
}

/// Installs berth's CRD from `crds/` (create, or replace when present: 1.20's server-side apply
/// rejects the CEL fields) and waits until the apiserver serves it.
pub async fn install_crd(client: &Client) {
    // Once per test binary; tests run concurrently and would race on replace.
    static INSTALLED: tokio::sync::Mutex<bool> = tokio::sync::Mutex::const_new(false);
    let mut installed = INSTALLED.lock().await;
    if !*installed {
        install_crd_now(client).await;
        *installed = true;
    }
}

async fn install_crd_now(client: &Client) {
    let yaml =
        std::fs::read_to_string(repo_root().join("crds/statefullocalvolume.yaml")).expect("read crds/");
    let crd: CustomResourceDefinition = serde_saphyr::from_str(&yaml).expect("parse the CRD YAML");
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    match api.create(&PostParams::default(), &crd).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let mut crd = crd.clone();
            let current = api.get(&crd.name_any()).await.expect("get the existing CRD");
            crd.metadata.resource_version = current.resource_version();
            api.replace(&crd.name_any(), &PostParams::default(), &crd)
                .await
                .expect("replace the CRD");
        }
        Err(e) => panic!("the apiserver refused the CRD from crds/: {e}"),
    }
    for _ in 0..100 {
        let current = api.get(&crd.name_any()).await.expect("get the CRD");
        let conditions = current.status.and_then(|s| s.conditions).unwrap_or_default();
        if let Some(bad) = conditions
            .iter()
            .find(|c| c.type_ == "NonStructuralSchema" && c.status == "True")
        {
            panic!("the CRD schema is not structural: {:?}", bad.message);
        }
        if conditions
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
        {
            // Established can precede discovery by a moment; a list proves it is served.
            let slvs: Api<StatefulLocalVolume> = Api::all(client.clone());
            if slvs.list(&Default::default()).await.is_ok() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the CRD was not established within 10 s");
}

/// Creates a fresh namespace whose name starts with `prefix` (a tenant name, by default).
pub async fn namespace(client: &Client, prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create a namespace");
    name
}

/// kubectl with the test kubeconfig (the one `scripts/kube-test-env install` puts in its cache).
pub fn kubectl() -> Command {
    let path = Command::new(repo_root().join("scripts/kube-test-env"))
        .arg("kubectl")
        .output()
        .expect("find kubectl");
    let kubectl = String::from_utf8(path.stdout).expect("kubectl path is UTF-8");
    let mut cmd = Command::new(kubectl.trim());
    cmd.env("KUBECONFIG", kubeconfig());
    cmd
}
