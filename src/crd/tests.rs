use std::path::PathBuf;

use kube::core::cel::Validator;
use serde_json::{Value, json};

use super::{validate::*, *};
use crate::tenant::TenantId;

fn spec(v: Value) -> StatefulLocalVolumeSpec {
    serde_json::from_value(v).unwrap()
}

fn localtime() -> Value {
    json!({
        "app": "/toto/web",
        "containerPath": "/etc/localtime",
        "hostPath": "/etc/localtime",
        "type": "File",
        "readOnly": true,
        "owner": {"uid": 1000, "gid": 1000},
        "permissions": "0640",
        "seed": {"copyFromHost": "/etc/localtime"},
        "placement": {"host": "node-3"},
        "capacity": "10Gi",
        "reclaimPolicy": "Retain"
    })
}

fn check(v: Value) -> Result<VolumeRequest, SpecError> {
    validate(
        &spec(v),
        &TenantId::parse("toto").unwrap(),
        &TenantPolicy::default(),
    )
}

fn with(mut base: Value, key: &str, value: Value) -> Value {
    base[key] = value;
    base
}

fn schema() -> Value {
    let crd = definition();
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

/// The whole object as the apiserver would see it, for client-side CEL.
fn object(spec: Value) -> Value {
    json!({"apiVersion": "berth.dev/v1alpha1", "kind": "StatefulLocalVolume",
           "metadata": {"name": "v", "namespace": "toto"}, "spec": spec})
}

fn cel_ok(spec: Value, old: Option<Value>) -> bool {
    Validator::new()
        .validate(&schema(), &object(spec), old.map(object).as_ref())
        .is_ok()
}

#[test]
fn the_design_example_is_valid() {
    let req = check(localtime()).unwrap();
    assert_eq!(req.app.as_str(), "/toto/web");
    assert_eq!(
        req.host_path_abs,
        PathBuf::from("/containerdata/user-toto/etc/localtime")
    );
    assert_eq!(req.kind, VolumeType::File);
    assert_eq!(req.mode, 0o640);
    assert_eq!(req.seed, Some(SeedSource::CopyFromHost("/etc/localtime".into())));
    assert_eq!(req.host.as_deref(), Some("node-3"));
    assert_eq!(req.capacity_bytes, Some(10 << 30));
    assert!(req.read_only);
}

#[test]
fn defaults_are_a_retained_directory_with_0755() {
    let req = check(json!({"app": "/toto/db", "containerPath": "/data", "hostPath": "/db"})).unwrap();
    assert_eq!(req.kind, VolumeType::Directory);
    assert_eq!(req.mode, 0o755);
    assert_eq!(req.reclaim, ReclaimPolicy::Retain);
    assert!(!req.read_only && !req.allow_concurrent_writers);
    assert_eq!(req.owner, None);
}

#[test]
fn each_bad_field_is_named() {
    let cases = [
        (with(localtime(), "app", json!("/tata/web")), "spec.app"),
        (with(localtime(), "app", json!("toto/web")), "spec.app"),
        (
            with(localtime(), "containerPath", json!("etc/localtime")),
            "spec.containerPath",
        ),
        (
            with(localtime(), "containerPath", json!("/etc:/x")),
            "spec.containerPath",
        ),
        (
            with(localtime(), "hostPath", json!("/../user-tata/x")),
            "spec.hostPath",
        ),
        (with(localtime(), "hostPath", json!("/")), "spec.hostPath"),
        (
            with(localtime(), "permissions", json!("4755")),
            "spec.permissions",
        ),
        (
            with(localtime(), "permissions", json!("0999")),
            "spec.permissions",
        ),
        (
            with(localtime(), "placement", json!({"host": "node 3"})),
            "spec.placement.host",
        ),
        (with(localtime(), "capacity", json!("ten")), "spec.capacity"),
        (with(localtime(), "capacity", json!("512Ki")), "spec.capacity"),
        (
            with(localtime(), "seed", json!({"copyFromHost": "/etc/../shadow"})),
            "spec.seed.copyFromHost",
        ),
        (
            with(
                localtime(),
                "seed",
                json!({"content": "x", "copyFromHost": "/etc/localtime"}),
            ),
            "spec.seed",
        ),
        (with(localtime(), "type", json!("Directory")), "spec.seed"),
    ];
    for (input, field) in cases {
        let err = check(input.clone()).unwrap_err();
        assert_eq!(err.field, field, "{input} gave {err}");
    }
}

#[test]
fn error_messages_say_what_is_wrong() {
    let err = check(with(localtime(), "app", json!("/tata/web"))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "spec.app: app \"/tata/web\" is outside the tenant's Marathon group \"/toto\": a tenant may only use apps under its own group"
    );
    let err = check(with(localtime(), "hostPath", json!("/var/../etc"))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "spec.hostPath: must not contain a '..' component"
    );
}

#[test]
fn modes_and_sizes_parse() {
    assert_eq!(parse_mode("0640"), Ok(0o640));
    assert_eq!(parse_mode("750"), Ok(0o750));
    for bad in ["", "64", "06400", "1777", "4755", "0o640", "0x1ff", "08"] {
        assert!(parse_mode(bad).is_err(), "{bad}");
    }
    assert_eq!(parse_bytes("10Gi"), Ok(10 << 30));
    assert_eq!(parse_bytes("500M"), Ok(500_000_000));
    assert_eq!(parse_bytes("1.5Ki"), Ok(1536));
    assert_eq!(parse_bytes("0.1"), Ok(1));
    assert_eq!(parse_bytes("1024"), Ok(1024));
    for bad in ["", "Gi", "-1Gi", "1GB", "1e3", "1..2", "99999999999Ei"] {
        assert!(parse_bytes(bad).is_err(), "{bad}");
    }
}

#[test]
fn crd_names_scope_and_subresources() {
    let crd = definition();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("statefullocalvolumes.berth.dev")
    );
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.short_names, Some(vec!["slv".to_owned()]));
    assert_eq!(crd.spec.names.categories, Some(vec!["berth".to_owned()]));
    let v = &crd.spec.versions[0];
    assert_eq!(v.name, "v1alpha1");
    assert!(v.subresources.as_ref().unwrap().status.is_some());
    let columns: Vec<_> = v
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| (c.name.as_str(), c.priority.unwrap_or(0)))
        .collect();
    // The default view, then what `-o wide` adds.
    assert_eq!(
        columns,
        [
            ("App", 0),
            ("Host", 0),
            ("Phase", 0),
            ("Ready", 0),
            ("Moving", 0),
            ("Age", 0),
            ("Reason", 1),
            ("HostPath", 1),
            ("Capacity", 1),
            ("Used", 1),
            ("Limit", 1)
        ]
    );
}

/// Kubernetes publishes the schema as OpenAPI v2 by dropping the type and fields of every
/// `nullable` node, which hid every nested field from `kubectl explain`; and a `pattern` shows
/// users a raw regular expression.
#[test]
fn the_published_schema_has_no_nullable_and_no_pattern() {
    let schema = schema();
    let text = serde_json::to_string(&schema).unwrap();
    assert!(!text.contains("\"nullable\""), "{text}");
    assert!(!text.contains("\"pattern\""), "{text}");
    let spec = &schema["properties"]["spec"]["properties"];
    for (name, node) in [
        ("owner", &spec["owner"]),
        ("placement", &spec["placement"]),
        ("seed", &spec["seed"]),
        ("status", &schema["properties"]["status"]),
    ] {
        assert_eq!(node["type"], "object", "{name}");
        assert!(
            node["properties"].as_object().is_some_and(|p| !p.is_empty()),
            "{name} lists its fields"
        );
    }
}

#[test]
fn conditions_are_a_list_map_keyed_by_type() {
    let conditions = &schema()["properties"]["status"]["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
}

/// Every field has a description, because `kubectl explain` is the users' reference.
#[test]
fn every_field_is_described() {
    fn walk(path: &str, node: &Value, missing: &mut Vec<String>) {
        if let Some(props) = node.get("properties").and_then(Value::as_object) {
            for (name, child) in props {
                let p = format!("{path}.{name}");
                let described = child
                    .get("description")
                    .and_then(Value::as_str)
                    .is_some_and(|d| !d.is_empty());
                if !described && !["metadata", "apiVersion", "kind"].contains(&name.as_str()) {
                    missing.push(p.clone());
                }
                walk(&p, child, missing);
            }
        }
        if let Some(items) = node.get("items") {
            walk(&format!("{path}[]"), items, missing);
        }
    }
    let mut missing = Vec::new();
    walk("", &schema(), &mut missing);
    // Condition's own fields come described from Kubernetes' types.
    assert!(missing.is_empty(), "fields without a description: {missing:?}");
}

#[test]
fn cel_rules_agree_with_the_controller() {
    let cases = [
        (localtime(), true),
        (with(localtime(), "type", json!("Directory")), false),
        (
            with(
                localtime(),
                "seed",
                json!({"content": "x", "copyFromHost": "/etc/localtime"}),
            ),
            false,
        ),
        (with(localtime(), "seed", json!({})), false),
        (with(localtime(), "seed", json!({"content": "UTC\n"})), true),
    ];
    for (input, ok) in cases {
        assert_eq!(cel_ok(input.clone(), None), ok, "CEL on {input}");
        assert_eq!(check(input.clone()).is_ok(), ok, "controller on {input}");
    }
}

#[test]
fn app_is_immutable_under_cel() {
    let old = localtime();
    assert!(cel_ok(
        with(old.clone(), "readOnly", json!(false)),
        Some(old.clone())
    ));
    assert!(!cel_ok(with(old.clone(), "app", json!("/toto/other")), Some(old)));
}

#[test]
fn host_path_is_fixed_under_cel_once_the_volume_holds_data() {
    let cel = |new: Value, old: Value| Validator::new().validate(&schema(), &new, Some(&old)).is_ok();
    let bound = |spec: Value| {
        let mut o = object(spec);
        o["status"] = json!({"phase": "Bound", "hostPath": "/containerdata/user-toto/etc/localtime"});
        o
    };
    let moved = with(localtime(), "hostPath", json!("/etc/tz"));
    // Before berth created anything, the path may still change.
    assert!(cel(object(moved.clone()), object(localtime())));
    // Afterwards it may not; other fields may.
    assert!(!cel(bound(moved), bound(localtime())));
    assert!(cel(
        bound(with(localtime(), "readOnly", json!(false))),
        bound(localtime())
    ));
}

#[test]
fn committed_crd_matches_the_types() {
    let committed = include_str!("../../crds/statefullocalvolume.yaml");
    assert!(
        committed == crd_yaml().unwrap(),
        "crds/statefullocalvolume.yaml is stale: run `cargo run -- crd > crds/statefullocalvolume.yaml`"
    );
}
