//! The Helm chart in `charts/berth`, rendered and installed by a real Helm engine (helm-sdkpy, a
//! Go build of Helm 4, through `scripts/helm.py`) into the real kube-apiserver v1.20.2 of
//! `tests/support`.
mod support;
mod support_helm;

use std::{collections::BTreeMap, path::Path};

use berth::{controller::config::ControllerArgs, crd::StatefulLocalVolume};
use clap::Parser;
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::ServiceAccount,
        rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use serde_json::{Value, json};
use support_helm::{chart_dir, chart_rbac, helm, helm_ok, of_kind, one, template, try_template};

const CRD_NAME: &str = "statefullocalvolumes.berth.dev";

/// Installs share the cluster-scoped CRD: one at a time in this binary.
static CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let s = |v: &[&str]| Some(v.iter().map(|x| x.to_string()).collect::<Vec<_>>());
    PolicyRule {
        api_groups: s(groups),
        resources: s(resources),
        verbs: verbs.iter().map(|x| x.to_string()).collect(),
        ..Default::default()
    }
}

/// Exactly what the controller needs: no Secrets, no pods, no CRD writes.
fn expected_cluster_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            &["berth.dev"],
            &["statefullocalvolumes"],
            &["get", "list", "watch", "patch", "update"],
        ),
        rule(
            &["berth.dev"],
            &["statefullocalvolumes/status"],
            &["get", "patch", "update"],
        ),
        rule(&["berth.dev"], &["statefullocalvolumes/finalizers"], &["update"]),
        rule(&["events.k8s.io"], &["events"], &["create", "patch"]),
    ]
}

fn expected_lease_rules() -> Vec<PolicyRule> {
    vec![rule(
        &["coordination.k8s.io"],
        &["leases"],
        &["get", "list", "watch", "create", "update", "patch"],
    )]
}

fn container(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]["containers"][0]
}

fn args_of(deployment: &Value) -> Vec<String> {
    serde_json::from_value(container(deployment)["args"].clone()).expect("args")
}

/// Parses a rendered command line with the controller's own flag definitions, so a flag the
/// chart passes that `berth controller` does not know fails here.
fn parse_controller_args(args: &[String]) -> ControllerArgs {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ControllerArgs,
    }
    assert_eq!(args[0], "controller", "the container runs `berth controller`");
    let argv = std::iter::once("berth-controller".to_string()).chain(args[1..].iter().cloned());
    Cli::try_parse_from(argv)
        .unwrap_or_else(|e| panic!("the chart passes flags `berth controller` refuses: {e}\n{args:?}"))
        .args
}

#[test]
fn lint_passes() {
    let chart = chart_dir();
    let out = helm_ok(&["lint", chart.to_str().unwrap()]);
    assert!(out.contains("\"TotalChartsLinted\": 1"), "{out}");
}

/// Lint fails on a chart whose own values break its schema, and says why.
#[test]
fn lint_catches_a_typo_in_the_values_file() {
    let copy =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("lint-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&copy);
    std::fs::create_dir_all(copy.join("templates")).unwrap();
    for entry in ["Chart.yaml", "values.schema.json", ".helmignore"] {
        std::fs::copy(chart_dir().join(entry), copy.join(entry)).unwrap();
    }
    for entry in std::fs::read_dir(chart_dir().join("templates")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copy.join("templates").join(entry.file_name())).unwrap();
    }
    let values = std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap();
    std::fs::write(
        copy.join("values.yaml"),
        values.replace("\nresync: 5m", "\nresynk: 5m"),
    )
    .unwrap();
    let out = helm(&["lint", copy.to_str().unwrap()]);
    std::fs::remove_dir_all(&copy).unwrap();
    assert!(!out.status.success(), "lint accepted a typo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("additional properties 'resynk' not allowed"),
        "{stderr}"
    );
}

#[test]
fn app_version_is_the_crate_version() {
    let chart: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap()).unwrap();
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
}

/// templates/crd.yaml is crds/statefullocalvolume.yaml plus template lines (the guard and the
/// labels/annotations include): dropping those gives the file back byte for byte.
#[test]
fn crd_template_is_the_generated_crd() {
    let crd_template = std::fs::read_to_string(chart_dir().join("templates/crd.yaml")).unwrap();
    let generated =
        std::fs::read_to_string(support::repo_root().join("crds/statefullocalvolume.yaml")).unwrap();
    let stripped: String = crd_template
        .lines()
        .filter(|l| !l.trim_start().starts_with("{{"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        stripped == generated,
        "charts/berth/templates/crd.yaml differs from crds/statefullocalvolume.yaml: run \
         `scripts/helm.py sync-crd` (or copy the file between the template lines)"
    );

    // And the engine renders exactly that object, plus the chart's metadata.
    let rendered = template_crd(&json!({}));
    let mut expected: Value = serde_saphyr::from_str(&generated).unwrap();
    let mut got = rendered.clone();
    for v in [&mut expected, &mut got] {
        let meta = v["metadata"].as_object_mut().unwrap();
        meta.remove("labels");
        meta.remove("annotations");
    }
    assert_eq!(got, expected);
    assert_eq!(
        rendered["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    assert_eq!(
        rendered["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "Helm"
    );

    let not_kept = template_crd(&json!({"crds": {"keep": false}}));
    assert!(not_kept["metadata"]["annotations"].is_null(), "{not_kept}");
    let off = template("berth", "berth", &json!({"crds": {"enabled": false}}));
    assert!(of_kind(&off, "CustomResourceDefinition").is_empty());
}

fn template_crd(values: &Value) -> Value {
    one(&template("berth", "berth", values), "CustomResourceDefinition").clone()
}

#[test]
fn schema_rejects_typos_and_wrong_types() {
    for (values, expect) in [
        (
            json!({"replicaCont": 2}),
            "additional properties 'replicaCont' not allowed",
        ),
        (
            json!({"marathon": {"url": "http://m:8080"}}),
            "additional properties 'url' not allowed",
        ),
        (
            json!({"agents": {"token": {"secret": "x"}}}),
            "additional properties 'secret' not allowed",
        ),
        (json!({"replicaCount": "2"}), "want integer"),
        (json!({"marathon": {"urls": "http://m:8080"}}), "want array"),
        (json!({"crds": {"keep": "yes"}}), "want boolean"),
        (
            json!({"marathon": {"auth": {"type": "oauth"}}}),
            "/marathon/auth/type",
        ),
        (json!({"resync": "5 minutes"}), "/resync"),
        (
            json!({"tenants": {"rootTemplate": "/containerdata/{tenant}/data"}}),
            "rootTemplate",
        ),
    ] {
        let err = try_template("berth", "berth", &values)
            .map(|_| ())
            .expect_err(&format!("values {values} were accepted"));
        assert!(
            err.contains(expect),
            "values {values}: expected {expect:?} in:\n{err}"
        );
    }
}

#[test]
fn cross_field_mistakes_are_explained() {
    for (values, expect) in [
        (
            json!({"marathon": {"auth": {"type": "basic"}}}),
            "set marathon.auth.secretName",
        ),
        (
            json!({"podDisruptionBudget": {"enabled": true}}),
            "needs replicaCount > 1",
        ),
        (
            json!({"agents": {"ca": {"configMapName": "a", "secretName": "b"}}}),
            "configMapName or secretName, not both",
        ),
    ] {
        let err = try_template("berth", "berth", &values).expect_err(&values.to_string());
        assert!(
            err.contains(expect),
            "values {values}: expected {expect:?} in:\n{err}"
        );
    }
}

/// Every default in values.schema.json (which docs/install.md is generated from) is the value in
/// values.yaml.
#[test]
fn schema_defaults_are_the_values_file() {
    let values: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap()).unwrap();
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(chart_dir().join("values.schema.json")).unwrap())
            .unwrap();
    fn walk(prefix: &str, schema: &Value, values: &Value, seen: &mut Vec<String>) {
        for (key, sub) in schema["properties"].as_object().unwrap() {
            if key == "global" {
                continue;
            }
            let name = format!("{prefix}{key}");
            if sub.get("properties").is_some() {
                walk(&format!("{name}."), sub, &values[key], seen);
            } else {
                assert_eq!(sub["default"], values[key], "default of {name}");
                seen.push(name);
            }
        }
        // No key in values.yaml that the schema does not describe.
        for key in values.as_object().unwrap().keys() {
            assert!(
                schema["properties"].get(key).is_some(),
                "{prefix}{key} is not in the schema"
            );
        }
    }
    let mut seen = Vec::new();
    walk("", &schema, &values, &mut seen);
    assert!(seen.len() > 40, "{seen:?}");
}

#[test]
fn defaults_render_a_hardened_single_controller() {
    let objects = template("berth", "berth", &json!({}));
    let deployment = one(&objects, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
    let args = args_of(deployment);
    assert!(!args.contains(&"--leader-elect".to_string()), "{args:?}");
    let parsed = parse_controller_args(&args);
    assert_eq!(parsed.marathon_urls, ["http://marathon.mesos:8080"]);
    assert_eq!(parsed.tenant_root, "/containerdata/user-{tenant}");
    assert_eq!(parsed.app_group, "/{tenant}");
    assert_eq!(parsed.resync, std::time::Duration::from_secs(300));
    assert_eq!(parsed.debounce, std::time::Duration::from_secs(1));
    assert_eq!(parsed.listen.port(), 8080);
    // A token per host, derived from the secret the chart mounts.
    assert_eq!(
        parsed.agent_secret_file.as_deref(),
        Some(Path::new("/etc/berth/agent/token"))
    );
    assert_eq!(parsed.agent_token_file, None);
    assert!(!parsed.leader_elect);
    // Agents from the agent's own Marathon app, and only namespaces the operator maps.
    assert_eq!(parsed.agent_app.as_deref(), Some("/berth.system/agent"));
    assert!(parsed.agents.is_empty());
    assert!(parsed.mapped_namespaces_only);
    assert!(parsed.tenant_map.is_empty());
    assert!(
        of_kind(&objects, "Role").is_empty(),
        "no Lease access without leader election"
    );
    assert!(of_kind(&objects, "PodDisruptionBudget").is_empty());
    assert!(of_kind(&objects, "ServiceMonitor").is_empty());

    let rbac = chart_rbac(json!({}));
    assert_eq!(rbac.cluster_rules, expected_cluster_rules());
    assert!(rbac.namespaced_rules.is_empty());
}

#[test]
fn several_replicas_elect_a_leader() {
    let objects = template(
        "berth",
        "ops",
        &json!({"replicaCount": 2, "podDisruptionBudget": {"enabled": true}}),
    );
    let deployment = one(&objects, "Deployment");
    assert_eq!(deployment["spec"]["strategy"]["type"], "RollingUpdate");
    let parsed = parse_controller_args(&args_of(deployment));
    assert!(parsed.leader_elect);
    assert_eq!(parsed.lease_name, "berth-controller");
    let env = container(deployment)["env"].as_array().unwrap();
    let field = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .map(|e| e["valueFrom"]["fieldRef"]["fieldPath"].clone())
    };
    assert_eq!(field("POD_NAME"), Some(json!("metadata.name")));
    assert_eq!(field("POD_NAMESPACE"), Some(json!("metadata.namespace")));
    let role = one(&objects, "Role");
    assert_eq!(role["metadata"]["namespace"], "ops");
    assert_eq!(one(&objects, "RoleBinding")["subjects"][0]["namespace"], "ops");
    assert_eq!(one(&objects, "PodDisruptionBudget")["spec"]["minAvailable"], 1);

    let rbac = chart_rbac(json!({"replicaCount": 2}));
    assert_eq!(rbac.cluster_rules, expected_cluster_rules());
    assert_eq!(rbac.namespaced_rules, expected_lease_rules());
    assert_eq!(rbac.objects.len(), 4);
}

#[test]
fn optional_monitoring_and_extras_render() {
    let objects = template(
        "berth",
        "ops",
        &json!({
            "serviceMonitor": {"enabled": true, "labels": {"release": "prom"}},
            "service": {"enabled": false},
            "extraArgs": ["--marathon-timeout=30s"],
            "marathon": {"timeout": "5s"},
            "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
        }),
    );
    let sm = one(&objects, "ServiceMonitor");
    assert_eq!(sm["metadata"]["labels"]["release"], "prom");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "http-metrics");
    assert_eq!(
        one(&objects, "Service")["spec"]["ports"][0]["name"],
        "http-metrics"
    );
    let deployment = one(&objects, "Deployment");
    assert!(args_of(deployment).contains(&"--marathon-timeout=30s".to_string()));
    assert!(
        container(deployment)["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "HTTPS_PROXY")
    );
}

/// `berth-<pid>-<n>` names: releases of concurrent tests never share cluster-scoped objects.
fn release_name(namespace: &str) -> String {
    format!("berth-{}", namespace.trim_start_matches("helm-"))
}

async fn get_deployment(client: &kube::Client, ns: &str, name: &str) -> Value {
    let d = Api::<Deployment>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap();
    serde_json::to_value(d).unwrap()
}

#[tokio::test]
async fn install_with_defaults() {
    let _one = CLUSTER.lock().await;
    let client = support::admin_client().await;
    let ns = support::namespace(&client, "helm").await;
    let rel = release_name(&ns);
    let release = support_helm::release("install", support::kubeconfig(), &rel, &ns, &json!({}), &[])
        .unwrap_or_else(|e| panic!("helm install: {e}"));
    // The notes say what the defaults do: agents from their app, no namespace served yet.
    let release: Value = serde_json::from_str(&release).expect("release JSON");
    let notes = release["info"]["notes"].as_str().unwrap_or_default();
    assert!(
        notes.contains("Agents: the tasks of Marathon app /berth.system/agent (port 8443)"),
        "{notes}"
    );
    assert!(
        notes.contains("WARNING: no namespace is mapped to a tenant yet, so berth refuses every volume"),
        "{notes}"
    );

    let deployment = get_deployment(&client, &ns, &rel).await;
    let c = container(&deployment);
    assert_eq!(c["image"], format!("berth:{}", env!("CARGO_PKG_VERSION")));
    let parsed = parse_controller_args(&args_of(&deployment));
    assert_eq!(parsed.marathon_urls, ["http://marathon.mesos:8080"]);
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(pod["serviceAccountName"], rel);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["ports"][0]["containerPort"], 8080);
    assert!(c["resources"]["limits"]["memory"].is_string());

    Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .get(&rel)
        .await
        .unwrap();
    let role = Api::<ClusterRole>::all(client.clone()).get(&rel).await.unwrap();
    assert_eq!(role.rules.unwrap_or_default(), expected_cluster_rules());
    let binding = Api::<ClusterRoleBinding>::all(client.clone())
        .get(&rel)
        .await
        .unwrap();
    let subject = &binding.subjects.unwrap()[0];
    assert_eq!(
        (subject.kind.as_str(), subject.name.as_str()),
        ("ServiceAccount", rel.as_str())
    );
    assert_eq!(subject.namespace.as_deref(), Some(ns.as_str()));
    assert_eq!(binding.role_ref.name, rel);

    let crd = Api::<CustomResourceDefinition>::all(client.clone())
        .get(CRD_NAME)
        .await
        .unwrap();
    let annotations = crd.metadata.annotations.unwrap_or_default();
    assert_eq!(
        annotations.get("helm.sh/resource-policy").map(String::as_str),
        Some("keep")
    );
    assert_eq!(annotations.get("meta.helm.sh/release-name"), Some(&rel));
    assert!(
        crd.spec
            .versions
            .iter()
            .any(|v| v.name == "v1alpha1" && v.served && v.storage)
    );

    support_helm::uninstall(support::kubeconfig(), &rel, &ns);
}

#[tokio::test]
async fn install_with_a_values_file_then_upgrade() {
    let _one = CLUSTER.lock().await;
    let client = support::admin_client().await;
    let ns = support::namespace(&client, "helm").await;
    let rel = release_name(&ns);
    let file = support::repo_root().join("tests/support_helm/values-full.yaml");
    support_helm::release(
        "install",
        support::kubeconfig(),
        &rel,
        &ns,
        &json!({}),
        &["-f", file.to_str().unwrap()],
    )
    .unwrap_or_else(|e| panic!("helm install: {e}"));

    let deployment = get_deployment(&client, &ns, &rel).await;
    assert_eq!(deployment["spec"]["replicas"], 3);
    assert_eq!(
        container(&deployment)["image"],
        "registry.internal/platform/berth:0.1.0-rc1"
    );
    let args = args_of(&deployment);
    let parsed = parse_controller_args(&args);
    assert_eq!(
        parsed.marathon_urls,
        ["https://marathon-1.mesos:8443", "https://marathon-2.mesos:8443"]
    );
    assert_eq!(parsed.marathon_timeout, std::time::Duration::from_secs(20));
    assert_eq!(
        parsed.marathon_token_file.as_deref(),
        Some(Path::new("/etc/berth/marathon/token"))
    );
    assert_eq!(parsed.marathon_password_file, None);
    assert_eq!(
        parsed.marathon_ca_file.as_deref(),
        Some(Path::new("/etc/berth/marathon-ca/ca.crt"))
    );
    assert_eq!(
        parsed.agents,
        [
            ("node-1".to_string(), "https://10.0.0.1:8443".to_string()),
            ("node-2".to_string(), "https://10.0.0.2:8443".to_string())
        ]
    );
    assert_eq!(parsed.agent_app.as_deref(), Some("/berth.system/agent"));
    assert_eq!(parsed.agent_port, 9443);
    assert_eq!(
        parsed.agent_ca_file.as_deref(),
        Some(Path::new("/etc/berth/agent-ca/ca.crt"))
    );
    assert_eq!(parsed.tenant_root, "/srv/data/tenant-{tenant}");
    assert_eq!(parsed.app_group, "/tenants/{tenant}");
    let map: BTreeMap<_, _> = parsed.tenant_map.into_iter().collect();
    assert_eq!(map.get("team-a-prod").map(String::as_str), Some("toto"));
    assert_eq!(map.get("team-b").map(String::as_str), Some("titi"));
    assert!(parsed.mapped_namespaces_only);
    assert_eq!(parsed.resync, std::time::Duration::from_secs(600));
    assert!(parsed.leader_elect);
    assert_eq!(parsed.lease_name, "berth-leader");

    // Secrets are mounted as files (the volumes name the operator's Secrets and keys).
    let volumes = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .clone();
    let volume = |name: &str| {
        volumes
            .iter()
            .find(|v| v["name"] == name)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(
        volume("marathon-auth")["secret"]["secretName"],
        "marathon-dcos-token"
    );
    assert_eq!(
        volume("marathon-auth")["secret"]["items"],
        json!([{"key": "dcos-token", "path": "token"}])
    );
    assert_eq!(volume("agent-token")["secret"]["secretName"], "berth-agent");
    assert_eq!(
        volume("agent-token")["secret"]["items"],
        json!([{"key": "bearer", "path": "token"}])
    );
    assert_eq!(volume("marathon-ca")["configMap"]["name"], "mesos-ca");
    assert_eq!(volume("agent-ca")["secret"]["secretName"], "berth-agent-ca");
    let env = container(&deployment)["env"].as_array().unwrap().clone();
    let value = |name: &str| env.iter().find(|e| e["name"] == name).map(|e| e["value"].clone());
    assert_eq!(value("BERTH_LOG_FORMAT"), Some(json!("json")));
    assert_eq!(value("RUST_LOG"), Some(json!("berth=debug,info")));

    let lease_role = Api::<Role>::namespaced(client.clone(), &ns)
        .get(&format!("{rel}-leader-election"))
        .await
        .unwrap();
    assert_eq!(lease_role.rules.unwrap_or_default(), expected_lease_rules());
    let cluster_role = Api::<ClusterRole>::all(client.clone()).get(&rel).await.unwrap();
    assert_eq!(cluster_role.rules.unwrap_or_default(), expected_cluster_rules());

    // Upgrade: back to one replica with another resync; the values file is reused by passing it
    // again, the change lands, and the Lease access goes away with leader election.
    support_helm::release(
        "upgrade",
        support::kubeconfig(),
        &rel,
        &ns,
        &json!({"replicaCount": 1, "resync": "2m", "podDisruptionBudget": {"enabled": false}}),
        &["-f", file.to_str().unwrap()],
    )
    .unwrap_or_else(|e| panic!("helm upgrade: {e}"));
    let deployment = get_deployment(&client, &ns, &rel).await;
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
    let parsed = parse_controller_args(&args_of(&deployment));
    assert_eq!(parsed.resync, std::time::Duration::from_secs(120));
    assert!(!parsed.leader_elect);
    assert_eq!(parsed.agent_port, 9443, "unchanged values stay");
    let gone = Api::<Role>::namespaced(client.clone(), &ns)
        .get_opt(&format!("{rel}-leader-election"))
        .await
        .unwrap();
    assert!(
        gone.is_none(),
        "the Lease Role is removed without leader election"
    );

    support_helm::uninstall(support::kubeconfig(), &rel, &ns);
}

#[tokio::test]
async fn uninstall_keeps_the_crd_and_the_volumes() {
    let _one = CLUSTER.lock().await;
    let client = support::admin_client().await;
    let ns = support::namespace(&client, "helm").await;
    let rel = release_name(&ns);
    support_helm::release("install", support::kubeconfig(), &rel, &ns, &json!({}), &[])
        .unwrap_or_else(|e| panic!("helm install: {e}"));

    // A volume declared while the release is installed.
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let slvs = Api::<StatefulLocalVolume>::namespaced(client.clone(), &ns);
    let volume = support::volume(
        "data",
        json!({"app": format!("/{ns}/web"), "containerPath": "/data", "hostPath": "/data"}),
    );
    let mut created = None;
    for _ in 0..50 {
        // The CRD may have just been (re)established by the install.
        match slvs.create(&PostParams::default(), &volume).await {
            Ok(v) => {
                created = Some(v);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
    let created = created.expect("create a StatefulLocalVolume after the install");

    support_helm::uninstall(support::kubeconfig(), &rel, &ns);

    assert!(
        Api::<Deployment>::namespaced(client.clone(), &ns)
            .get_opt(&rel)
            .await
            .unwrap()
            .is_none(),
        "the controller is uninstalled"
    );
    assert!(
        Api::<ClusterRole>::all(client.clone())
            .get_opt(&rel)
            .await
            .unwrap()
            .is_none()
    );
    let crd = crds.get_opt(CRD_NAME).await.unwrap().expect("the CRD is kept");
    assert!(
        crd.metadata.deletion_timestamp.is_none(),
        "the CRD is not being deleted"
    );
    let kept = slvs.get("data").await.expect("the volume is kept");
    assert_eq!(kept.metadata.uid, created.metadata.uid);

    // Reinstalling adopts the kept CRD.
    let rel2 = format!("{rel}-again");
    support_helm::release("install", support::kubeconfig(), &rel2, &ns, &json!({}), &[])
        .unwrap_or_else(|e| panic!("helm install over a kept CRD: {e}"));
    support_helm::uninstall(support::kubeconfig(), &rel2, &ns);
    slvs.delete("data", &DeleteParams::default()).await.unwrap();
}

#[test]
fn helm_py_reports_engine_errors() {
    let out = helm(&["template", "berth", "/nonexistent/chart"]);
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
}

/// docs/install.md's values reference is generated from values.schema.json and current.
#[test]
fn the_values_reference_in_the_docs_is_current() {
    let out = helm(&[
        "values-doc",
        "charts/berth/values.schema.json",
        "--doc",
        "docs/install.md",
        "--check",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc = std::fs::read_to_string(support::repo_root().join("docs/install.md")).unwrap();
    for value in [
        "`marathon.auth.type`",
        "`agents.token.secretName`",
        "`tenants.map`",
        "`crds.keep`",
    ] {
        assert!(doc.contains(value), "docs/install.md does not list {value}");
    }
}

/// The helper the controller's tests use: the service account berth/berth gets exactly the
/// chart's permissions, as the apiserver's RBAC authorizer answers SubjectAccessReviews for it.
#[tokio::test]
async fn chart_rbac_grants_the_service_account_exactly_the_chart_rules() {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    };
    let _one = CLUSTER.lock().await;
    let client = support::admin_client().await;
    support_helm::apply_chart_rbac(&client, json!({"replicaCount": 2})).await;
    let reviews: Api<SubjectAccessReview> = Api::all(client.clone());
    let allowed = |group: &str, resource: &str, sub: Option<&str>, verb: &str, ns: &str| {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some("system:serviceaccount:berth:berth".into()),
                groups: Some(vec![
                    "system:serviceaccounts".into(),
                    "system:serviceaccounts:berth".into(),
                ]),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(group.into()),
                    resource: Some(resource.into()),
                    subresource: sub.map(Into::into),
                    verb: Some(verb.into()),
                    namespace: Some(ns.into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let reviews = reviews.clone();
        async move {
            let answer = reviews.create(&PostParams::default(), &review).await.unwrap();
            answer.status.map(|s| s.allowed).unwrap_or(false)
        }
    };
    for (group, resource, sub, verb, ns, expected) in [
        ("berth.dev", "statefullocalvolumes", None, "watch", "toto", true),
        ("berth.dev", "statefullocalvolumes", None, "patch", "toto", true),
        ("berth.dev", "statefullocalvolumes", None, "delete", "toto", false),
        ("berth.dev", "statefullocalvolumes", None, "create", "toto", false),
        (
            "berth.dev",
            "statefullocalvolumes",
            Some("status"),
            "patch",
            "toto",
            true,
        ),
        (
            "berth.dev",
            "statefullocalvolumes",
            Some("finalizers"),
            "update",
            "toto",
            true,
        ),
        ("events.k8s.io", "events", None, "create", "toto", true),
        ("events.k8s.io", "events", None, "delete", "toto", false),
        ("coordination.k8s.io", "leases", None, "update", "berth", true),
        ("coordination.k8s.io", "leases", None, "update", "toto", false),
        ("", "secrets", None, "get", "berth", false),
        ("", "pods", None, "list", "toto", false),
        (
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            None,
            "update",
            "",
            false,
        ),
    ] {
        assert_eq!(
            allowed(group, resource, sub, verb, ns).await,
            expected,
            "{verb} {group}/{resource}{} in {ns:?}",
            sub.map(|s| format!("/{s}")).unwrap_or_default()
        );
    }
}
