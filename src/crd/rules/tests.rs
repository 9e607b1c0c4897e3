//! The CEL rules, evaluated client-side (kube's `cel` feature) on the published schema, against
//! the controller's own check: same verdicts, readable messages.

use std::sync::OnceLock;

use kube::core::cel::{CompiledSchema, ErrorKind, Validator, compile_schema};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::{
    crd::{
        definition,
        validate::{TenantPolicy, parse_mode, validate},
    },
    tenant::{MarathonAppId, TenantId, VolumePath},
};

fn schema() -> Value {
    let crd = definition();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("the CRD has a schema");
    serde_json::to_value(schema).unwrap()
}

fn compiled() -> &'static CompiledSchema {
    static SCHEMA: OnceLock<CompiledSchema> = OnceLock::new();
    SCHEMA.get_or_init(|| compile_schema(&schema()))
}

/// The published schema of one spec field (`hostPath`, `placement.host`, …), compiled once: the
/// property tests evaluate only that field's rules (CEL compiles each regex on every call).
fn field(path: &str) -> &'static CompiledSchema {
    static FIELDS: OnceLock<std::sync::Mutex<Vec<(String, &'static CompiledSchema)>>> = OnceLock::new();
    let mut fields = FIELDS.get_or_init(Default::default).lock().unwrap();
    if let Some((_, c)) = fields.iter().find(|(p, _)| p == path) {
        return c;
    }
    let mut node = schema()["properties"]["spec"].clone();
    for name in path.split('.') {
        node = node["properties"][name].clone();
    }
    assert!(node.is_object(), "no field {path}");
    let c: &'static CompiledSchema = Box::leak(Box::new(compile_schema(&node)));
    fields.push((path.to_owned(), c));
    c
}

/// True when every rule of the field accepts the value.
fn field_ok(path: &str, value: Value) -> bool {
    match Validator::new().validate_compiled(field(path), &value, None) {
        Ok(()) => true,
        Err(errors) => {
            for e in errors.into_vec() {
                assert_eq!(e.kind, ErrorKind::ValidationFailure, "{path}={value}: {e:?}");
            }
            false
        }
    }
}

fn base() -> Value {
    json!({"app": "/toto/web", "containerPath": "/data", "hostPath": "/data"})
}

/// The messages of the rules that fail for this spec. Only failed rules count: a rule that
/// cannot be evaluated fails the test.
fn cel_messages(spec: &Value) -> Vec<String> {
    let object = json!({"apiVersion": "berth.dev/v1alpha1", "kind": "StatefulLocalVolume",
                        "metadata": {"name": "v", "namespace": "toto"}, "spec": spec});
    match Validator::new().validate_compiled(compiled(), &object, None) {
        Ok(()) => vec![],
        Err(errors) => errors
            .into_vec()
            .into_iter()
            .map(|e| {
                assert_eq!(e.kind, ErrorKind::ValidationFailure, "{spec}: {e:?}");
                e.message
            })
            .collect(),
    }
}

fn with(key: &str, value: Value) -> Value {
    let mut spec = base();
    spec[key] = value;
    spec
}

fn controller_message(spec: &Value) -> Option<String> {
    let spec = serde_json::from_value(spec.clone()).unwrap();
    validate(&spec, &TenantId::parse("toto").unwrap(), &TenantPolicy::default())
        .err()
        .map(|e| e.to_string())
}

#[test]
fn the_schema_compiles_and_the_example_passes() {
    let errors = compiled().compilation_errors();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(cel_messages(&base()), Vec::<String>::new());
    assert_eq!(controller_message(&base()), None);
}

/// What users wrote, what the apiserver (with CEL) and the controller (without) answer.
#[test]
fn bad_host_paths_get_readable_messages_from_both() {
    let deep = "/a".repeat(33);
    for (path, cel, controller) in [
        (
            "/a/../b",
            "must not contain a '..' component",
            "spec.hostPath: must not contain a '..' component",
        ),
        (
            "a/b",
            "must be an absolute path starting with '/'",
            "spec.hostPath: must be an absolute path starting with '/' (got \"a/b\")",
        ),
        (
            "~/x",
            "must be an absolute path starting with '/'",
            "spec.hostPath: must be an absolute path starting with '/' (got \"~/x\")",
        ),
        (
            "/a/b:ro",
            "must not contain ':' (it splits Docker's -v source:target:mode)",
            "spec.hostPath: must not contain ':' (it splits Docker's -v source:target:mode)",
        ),
        (
            "/héllo",
            "may contain only printable ASCII characters",
            "spec.hostPath: may contain only ASCII characters (found 'é')",
        ),
        (
            "/a/b ",
            "has a component that starts or ends with a space",
            "spec.hostPath: has a component that starts or ends with a space (\"b \")",
        ),
        (
            "",
            "is empty: give an absolute path such as /var/lib/data",
            "spec.hostPath: is empty: give an absolute path such as /var/lib/data",
        ),
        (
            &deep,
            "has more than 32 components; the limit is 32",
            "spec.hostPath: has 33 components; the limit is 32",
        ),
        (
            "/",
            "must name a path below the root, not the root itself",
            "spec.hostPath: must name a path below the root, not the root itself",
        ),
    ] {
        let spec = with("hostPath", json!(path));
        let messages = cel_messages(&spec);
        assert_eq!(messages.len(), 1, "{path:?}: {messages:?}");
        assert!(messages[0].starts_with(cel), "{path:?}: {messages:?}");
        let said = controller_message(&spec).unwrap_or_default();
        assert!(said.starts_with(controller), "{path:?}: {said}");
        assert!(!said.contains("should match") && !said.contains('^'), "{said}");
    }
}

#[test]
fn bad_apps_and_the_tenant_group_itself() {
    for (app, cel) in [
        ("toto/web", "must be an absolute Marathon app id"),
        ("/toto/Web", "may contain only lower-case letters"),
        ("/toto//web", "must not have an empty segment"),
        ("/toto/../tata", "must not have '.' or '..' segments"),
        ("/toto/-web", "segments must not start or end with '-'"),
        ("/toto/a..b", "dots must separate DNS-style labels"),
        (
            "/toto/tasks",
            "the last segment may not be 'restart', 'tasks' or 'versions'",
        ),
    ] {
        let spec = with("app", json!(app));
        let messages = cel_messages(&spec);
        assert_eq!(messages.len(), 1, "{app}: {messages:?}");
        assert!(messages[0].starts_with(cel), "{app}: {messages:?}");
        assert!(controller_message(&spec).unwrap().starts_with("spec.app: "));
    }
    // CEL cannot see the namespace; the controller says what to write instead.
    let spec = with("app", json!("/toto"));
    assert!(cel_messages(&spec).is_empty());
    assert_eq!(
        controller_message(&spec).unwrap(),
        "spec.app: \"/toto\" is the tenant's Marathon group itself, not an app: name an app inside /toto/, e.g. /toto/web"
    );
}

#[test]
fn unquoted_permissions_get_a_hint() {
    // `permissions: 0755` in YAML is the number 493.
    let spec = with("permissions", json!(493));
    let messages = cel_messages(&spec);
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert!(messages[0].contains("write permissions as a quoted string such as \"0755\""));
    assert_eq!(
        controller_message(&spec).unwrap(),
        "spec.permissions: is the number 493 (YAML reads an unquoted 0755 as an octal number): write permissions as a quoted string such as \"0755\""
    );
    let spec = with("permissions", json!(755));
    assert!(controller_message(&spec).unwrap().contains("such as \"0755\""));
    let spec = with("permissions", json!("4755"));
    assert!(cel_messages(&spec)[0].starts_with("must be three octal digits"));
    assert!(
        controller_message(&spec)
            .unwrap()
            .starts_with("spec.permissions: \"4755\" is not an octal mode")
    );
    for good in ["0750", "640"] {
        assert!(cel_messages(&with("permissions", json!(good))).is_empty());
        assert_eq!(controller_message(&with("permissions", json!(good))), None);
    }
}

#[test]
fn bad_hosts_get_a_readable_message() {
    let spec = with("placement", json!({"host": "node 3"}));
    assert!(cel_messages(&spec)[0].starts_with("must be a host name or IP address"));
    assert!(
        controller_message(&spec)
            .unwrap()
            .starts_with("spec.placement.host: ")
    );
}

/// Pieces of user paths and app ids, hostile and ordinary.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("...".to_owned()),
        Just(".a".to_owned()),
        Just("..a".to_owned()),
        Just("a.".to_owned()),
        Just("a..b".to_owned()),
        Just("a.-b".to_owned()),
        Just("-a".to_owned()),
        Just("a-".to_owned()),
        Just("".to_owned()),
        Just(" ".to_owned()),
        Just(" a".to_owned()),
        Just("a ".to_owned()),
        Just(":".to_owned()),
        Just(",".to_owned()),
        Just("\\".to_owned()),
        Just("\n".to_owned()),
        Just("\t".to_owned()),
        Just("\u{7f}".to_owned()),
        Just("é".to_owned()),
        Just("~".to_owned()),
        Just("tasks".to_owned()),
        Just("restart".to_owned()),
        Just("x".repeat(255)),
        Just("x".repeat(256)),
        "[ -~]{1,5}",
        "[a-z0-9.-]{1,6}",
    ]
}

fn joined(parts: Vec<String>, leading: bool) -> String {
    format!("{}{}", if leading { "/" } else { "" }, parts.join("/"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_500, ..ProptestConfig::default() })]

    /// The CEL rules on a user path accept exactly what the controller accepts.
    #[test]
    fn path_rules_agree_with_the_controller(
        parts in prop::collection::vec(piece(), 0..40),
        leading in any::<bool>(),
    ) {
        let s = joined(parts, leading);
        prop_assume!(s.len() < 4096);
        prop_assert_eq!(field_ok("hostPath", json!(s)), VolumePath::parse(&s).is_ok(), "{:?}", s);
    }

    /// The CEL rules on an app id accept exactly what Marathon's id rules (as the controller
    /// checks them) accept.
    #[test]
    fn app_rules_agree_with_the_controller(
        parts in prop::collection::vec(piece(), 0..6),
        leading in any::<bool>(),
    ) {
        let s = joined(parts, leading);
        prop_assume!(s.len() <= 512);
        prop_assert_eq!(field_ok("app", json!(s)), MarathonAppId::parse(&s).is_ok(), "{:?}", s);
    }

    /// Permissions: strings as the controller parses them; numbers never.
    #[test]
    fn permission_rules_agree_with_the_controller(
        text in prop_oneof!["[0-9]{0,5}", "[ -~]{0,4}"],
        number in 0..5000i64,
    ) {
        prop_assert_eq!(field_ok("permissions", json!(text)), parse_mode(&text).is_ok(), "{:?}", text);
        prop_assert!(!field_ok("permissions", json!(number)));
    }

    /// Host names: the same as the controller's check.
    #[test]
    fn host_rules_agree_with_the_controller(host in prop_oneof!["[A-Za-z0-9.-]{0,8}", "[ -~]{0,6}"]) {
        let spec = with("placement", json!({"host": host}));
        prop_assert_eq!(field_ok("placement.host", json!(host)), controller_message(&spec).is_none(), "{:?}", host);
    }
}

#[test]
fn every_user_path_has_the_path_rules() {
    let spec = schema()["properties"]["spec"]["properties"].clone();
    let rules = &spec["hostPath"]["x-kubernetes-validations"];
    assert_eq!(rules.as_array().unwrap().len(), super::PATH_RULES.len());
    assert_eq!(&spec["containerPath"]["x-kubernetes-validations"], rules);
    assert_eq!(
        &spec["seed"]["properties"]["copyFromHost"]["x-kubernetes-validations"],
        rules
    );
    for name in ["app", "containerPath", "hostPath"] {
        assert!(spec[name]["maxLength"].is_u64(), "{name} keeps its maxLength");
    }
}
