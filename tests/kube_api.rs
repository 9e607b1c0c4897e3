//! berth's API against a real kube-apiserver v1.20.2 with etcd: the CRD is structural and served,
//! volumes round-trip with server-side defaults, the schema refuses hostile paths, status is
//! written with server-side apply, and kubectl shows the printer columns and field docs.
mod support;

use berth::crd::{Phase, StatefulLocalVolume, StatefulLocalVolumeStatus, VolumeType};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Condition, jiff::Timestamp};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use support::*;

#[tokio::test]
async fn the_test_server_is_kube_apiserver_1_20_2() {
    let client = admin_client().await;
    let version = client.apiserver_version().await.unwrap();
    eprintln!("kube-apiserver {}", version.git_version);
    assert_eq!(version.git_version, "v1.20.2");
}

#[tokio::test]
async fn volumes_round_trip_with_schema_defaults() {
    let client = admin_client().await;
    install_crd(&client).await;
    let ns = namespace(&client, "toto").await;
    let api: Api<StatefulLocalVolume> = Api::namespaced(client, &ns);
    let created = api
        .create(
            &PostParams::default(),
            &volume(
                "data",
                json!({"app": format!("/{ns}/web"), "containerPath": "/data", "hostPath": "/data"}),
            ),
        )
        .await
        .unwrap();
    let read = api.get("data").await.unwrap();
    assert_eq!(read.spec, created.spec);
    // Defaults come from the schema, applied by the apiserver.
    let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(
        api.clone().into_client(),
        &ns,
        &kube::api::ApiResource::erase::<StatefulLocalVolume>(&()),
    );
    let stored = raw.get("data").await.unwrap();
    assert_eq!(stored.data["spec"]["type"], "Directory");
    assert_eq!(stored.data["spec"]["reclaimPolicy"], "Retain");
    assert_eq!(stored.data["spec"]["readOnly"], false);
    assert_eq!(read.spec.type_, VolumeType::Directory);
}

/// What a 1.20 apiserver checks itself: types, enums and lengths. It drops the CEL rules that
/// refuse bad paths and app ids with readable messages on 1.25+ servers, so there the controller
/// refuses them (see `tests/validation_messages.rs`); no error is a raw regular expression.
#[tokio::test]
async fn the_schema_checks_types_and_lengths_and_shows_no_regular_expression() {
    let client = admin_client().await;
    install_crd(&client).await;
    let ns = namespace(&client, "toto").await;
    let api: Api<StatefulLocalVolume> = Api::namespaced(client.clone(), &ns);
    // Untyped, so that wrongly typed fields reach the apiserver.
    let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client,
        &ns,
        &kube::api::ApiResource::erase::<StatefulLocalVolume>(&()),
    );
    let app = format!("/{ns}/web");
    let long = format!("/{}", "a".repeat(4095));
    for (field, value, expect) in [
        ("hostPath", json!(long), "should be at most 4095 chars long"),
        (
            "app",
            json!(format!("/{}", "a".repeat(512))),
            "should be at most 512 chars long",
        ),
        (
            "type",
            json!("Socket"),
            "supported values: \"Directory\", \"File\"",
        ),
        ("readOnly", json!("yes"), "must be of type boolean"),
        ("permissions", json!(true), "permissions"),
    ] {
        let mut spec = json!({"app": app, "containerPath": "/data", "hostPath": "/data"});
        spec[field] = value;
        let object = serde_json::from_value(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "StatefulLocalVolume",
            "metadata": {"name": "bad"}, "spec": spec,
        }))
        .unwrap();
        let err = raw.create(&PostParams::default(), &object).await.unwrap_err();
        match err {
            kube::Error::Api(s) => {
                assert_eq!(s.code, 422, "{field}: {s:?}");
                assert!(
                    s.message.contains(&format!("spec.{field}")),
                    "{field}: {}",
                    s.message
                );
                assert!(s.message.contains(expect), "{field}: {}", s.message);
                assert!(!s.message.contains("should match"), "{}", s.message);
            }
            other => panic!("{field}: expected a 422, got {other}"),
        }
    }
    assert!(
        api.list(&Default::default()).await.unwrap().items.is_empty(),
        "nothing was stored"
    );
    // Paths and app ids are left to CEL, which 1.20 does not run, and to the controller.
    let spec = json!({"app": app, "containerPath": "/data", "hostPath": "/a/../b"});
    api.create(&PostParams::default(), &volume("escape", spec))
        .await
        .expect("a 1.20 apiserver stores it; the controller refuses it");
}

fn ready(status: &str, reason: &str) -> Condition {
    Condition {
        type_: "Ready".into(),
        status: status.into(),
        reason: reason.into(),
        message: "test".into(),
        observed_generation: Some(1),
        last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            Timestamp::from_second(1_800_000_000).unwrap(),
        ),
    }
}

#[tokio::test]
async fn status_is_written_by_server_side_apply_and_identical_writes_are_no_ops() {
    let client = admin_client().await;
    install_crd(&client).await;
    let ns = namespace(&client, "toto").await;
    let api: Api<StatefulLocalVolume> = Api::namespaced(client, &ns);
    api.create(
        &PostParams::default(),
        &volume(
            "data",
            json!({"app": format!("/{ns}/web"), "containerPath": "/data", "hostPath": "/data"}),
        ),
    )
    .await
    .unwrap();
    let status = StatefulLocalVolumeStatus {
        phase: Some(Phase::Bound),
        host: Some("node-1".into()),
        host_path: Some(format!("/containerdata/user-{ns}/data")),
        app: Some(format!("/{ns}/web")),
        tenant: Some(ns.clone()),
        seal: Some("ab".repeat(32)),
        observed_generation: Some(1),
        conditions: vec![ready("True", "Bound")],
        data_marked: None,
        usage: None,
        migration: Some(berth::crd::MigrationStatus {
            from: "node-1".into(),
            to: "node-2".into(),
            id: "abc-1".into(),
            pass: 1,
            progress: Some("Copying 1Mi of 2Mi, 1 of 2 files".into()),
            ..Default::default()
        }),
        orphaned: vec![berth::crd::OrphanedData {
            host: "node-0".into(),
            host_path: format!("/containerdata/user-{ns}/data"),
            abandoned_at: "2026-11-30T12:00:00Z".into(),
            found: false,
        }],
    };
    let body = json!({"apiVersion": "berth.dev/v1alpha1", "kind": "StatefulLocalVolume", "status": status});
    let params = PatchParams::apply("berth-test").force();
    let first = api
        .patch_status("data", &params, &Patch::Apply(&body))
        .await
        .unwrap();
    assert_eq!(first.status.as_ref(), Some(&status));
    let second = api
        .patch_status("data", &params, &Patch::Apply(&body))
        .await
        .unwrap();
    assert_eq!(
        second.resource_version(),
        first.resource_version(),
        "an identical apply must not write"
    );
    // The status subresource ignores spec changes, and the spec endpoint ignores status.
    let flipped = StatefulLocalVolumeStatus {
        conditions: vec![ready("False", "HostUnavailable")],
        ..status
    };
    let body = json!({"apiVersion": "berth.dev/v1alpha1", "kind": "StatefulLocalVolume", "status": flipped,
                      "spec": {"readOnly": true}});
    let third = api
        .patch_status("data", &params, &Patch::Apply(&body))
        .await
        .unwrap();
    assert_eq!(third.status.unwrap().conditions[0].reason, "HostUnavailable");
    assert!(!third.spec.read_only);
}

#[tokio::test]
async fn kubectl_shows_printer_columns_and_field_docs() {
    let client = admin_client().await;
    install_crd(&client).await;
    let ns = namespace(&client, "toto").await;
    let api: Api<StatefulLocalVolume> = Api::namespaced(client, &ns);
    let app = format!("/{ns}/web");
    api.create(
        &PostParams::default(),
        &volume(
            "data",
            json!({"app": app, "containerPath": "/data", "hostPath": "/data", "capacity": "10Gi"}),
        ),
    )
    .await
    .unwrap();
    let status = json!({"apiVersion": "berth.dev/v1alpha1", "kind": "StatefulLocalVolume",
        "status": {"phase": "Bound", "host": "node-3", "hostPath": "/containerdata/user-toto/data",
                   "conditions": [ready("True", "Bound")],
                   "usage": {"limit": "Enforced", "used": "1.2Gi", "usedBytes": 1288490188_u64, "usedPercent": 12}}});
    api.patch_status(
        "data",
        &PatchParams::apply("berth-test").force(),
        &Patch::Apply(&status),
    )
    .await
    .unwrap();

    let out = kubectl().args(["get", "slv", "-n", &ns]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    eprintln!("{text}");
    let mut lines = text.lines();
    let header: Vec<_> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "APP", "HOST", "PHASE", "READY", "MOVING", "AGE"]);
    let row: Vec<_> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(&row[..5], ["data", app.as_str(), "node-3", "Bound", "True"]);

    // `-o wide` adds why and where, and the capacity with what the volume holds.
    let out = kubectl()
        .args(["get", "slv", "-n", &ns, "-o", "wide"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let header: Vec<_> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "APP", "HOST", "PHASE", "READY", "MOVING", "AGE", "REASON", "HOSTPATH", "CAPACITY",
            "USED", "LIMIT"
        ]
    );
    let row: Vec<_> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        &row[6..],
        [
            "Bound",
            "/containerdata/user-toto/data",
            "10Gi",
            "1.2Gi",
            "Enforced"
        ]
    );

    // While a move is under way, the Moving column shows how far its copy got.
    let moving = json!({"apiVersion": "berth.dev/v1alpha1", "kind": "StatefulLocalVolume",
        "status": {"phase": "Migrating", "host": "node-3", "hostPath": "/containerdata/user-toto/data",
                   "conditions": [ready("True", "Bound")],
                   "migration": {"from": "node-3", "to": "node-4", "id": "m1", "step": "Copying", "pass": 1,
                                 "progress": "Copying 1.2Gi of 3.0Gi, 40 of 100 files"}}});
    api.patch_status(
        "data",
        &PatchParams::apply("berth-test").force(),
        &Patch::Apply(&moving),
    )
    .await
    .unwrap();
    let out = kubectl().args(["get", "slv", "-n", &ns]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let row = text.lines().nth(1).unwrap();
    assert!(
        row.contains("Migrating") && row.contains("Copying 1.2Gi of 3.0Gi, 40 of 100 files"),
        "{text}"
    );

    // The short name and the category work too.
    let out = kubectl()
        .args(["get", "berth", "-n", &ns, "-o", "name"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        "statefullocalvolume.berth.dev/data"
    );

    let text = explain(&["slv.spec.hostPath"]).await;
    assert!(
        text.contains("Path of the data relative to the tenant's root"),
        "{text}"
    );
}

/// `kubectl explain FIELD` (extra flags in `args`), retried while the apiserver republishes its
/// OpenAPI document after a CRD change.
async fn explain(args: &[&str]) -> String {
    let mut text = String::new();
    for _ in 0..50 {
        let out = kubectl().arg("explain").args(args).output().unwrap();
        text = String::from_utf8(out.stdout).unwrap();
        if text.contains("DESCRIPTION") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    text
}

/// Nested fields are listed by `kubectl explain`, as kubectl 1.37 shows them from a 1.20
/// apiserver: by default (kubectl reads OpenAPI v3 where the server has it and falls back to
/// v2, which is all 1.20 serves) and with `--output=plaintext-openapiv2`. A `nullable` object in
/// the schema used to lose its fields in the published v2 document.
#[tokio::test]
async fn kubectl_explain_lists_nested_fields() {
    let client = admin_client().await;
    install_crd(&client).await;
    for output in [None, Some("--output=plaintext-openapiv2")] {
        for (field, expect) in [
            (
                "slv.spec.owner",
                &[
                    "FIELDS:",
                    "uid\t<integer> -required-",
                    "gid\t<integer> -required-",
                ][..],
            ),
            (
                "slv.spec.placement",
                &["FIELDS:", "host\t<string>", "avoidHosts\t<[]string>"],
            ),
            (
                "slv.spec.seed",
                &["FIELDS:", "content\t<string>", "copyFromHost\t<string>"],
            ),
            ("slv.spec.capacity", &["Most the volume may hold, e.g. 10Gi"]),
            ("slv.status.usage", &["limit", "usedBytes", "measuredAt"]),
            (
                "slv.status.conditions",
                &[
                    "FIELDS:",
                    "lastTransitionTime\t<string> -required-",
                    "reason\t<string> -required-",
                ],
            ),
            (
                "slv.status",
                &["FIELDS:", "hostPath\t<string>", "phase\t<string>"],
            ),
        ] {
            let args: Vec<&str> = std::iter::once(field).chain(output).collect();
            let text = explain(&args).await;
            for e in expect {
                assert!(text.contains(e), "kubectl explain {args:?}: no {e:?} in\n{text}");
            }
        }
    }
}

/// kubectl's own schema validation (kubectl 1.37 validates on the client when the server, such
/// as 1.20, cannot) refuses a misspelt field and names it; `--validate=false` lets the server
/// drop it silently, and the volume is mounted read-write.
#[tokio::test]
async fn kubectl_refuses_a_misspelt_field_unless_validation_is_off() {
    let client = admin_client().await;
    install_crd(&client).await;
    let ns = namespace(&client, "toto").await;
    // kubectl validates against the schema the apiserver publishes, which a new apiserver
    // publishes a moment after the CRD is established; without it kubectl checks nothing.
    let published = explain(&["slv.spec.readOnly"]).await;
    assert!(
        published.contains("DESCRIPTION"),
        "the schema was never published:\n{published}"
    );
    let manifest = format!(
        "apiVersion: berth.dev/v1alpha1\nkind: StatefulLocalVolume\nmetadata: {{name: typo, namespace: {ns}}}\n\
         spec:\n  app: /{ns}/web\n  containerPath: /data\n  hostPath: /data\n  readonly: true\n"
    );
    let apply = |extra: &[&str]| {
        let mut child = kubectl()
            .args(["apply", "-f", "-"])
            .args(extra)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(manifest.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = apply(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "kubectl accepted a misspelt field");
    assert!(
        stderr.contains("unknown field \"readonly\" in dev.berth.v1alpha1.StatefulLocalVolume.spec"),
        "{stderr}"
    );
    let api: Api<StatefulLocalVolume> = Api::namespaced(client, &ns);
    assert!(api.get_opt("typo").await.unwrap().is_none(), "nothing was stored");

    let out = apply(&["--validate=false"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        !api.get("typo").await.unwrap().spec.read_only,
        "the typo was dropped"
    );
}
