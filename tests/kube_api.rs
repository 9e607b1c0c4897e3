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

#[tokio::test]
async fn the_schema_refuses_hostile_paths() {
    let client = admin_client().await;
    install_crd(&client).await;
    let ns = namespace(&client, "toto").await;
    let api: Api<StatefulLocalVolume> = Api::namespaced(client, &ns);
    let app = format!("/{ns}/web");
    for (field, value) in [
        ("hostPath", "/../user-tata/secret"),
        ("hostPath", "var/log"),
        ("hostPath", "/var/log:/etc"),
        ("hostPath", "/a,b"),
        ("hostPath", "/./x"),
        ("containerPath", "relative"),
        ("permissions", "4755"),
    ] {
        let mut spec = json!({"app": app, "containerPath": "/data", "hostPath": "/data"});
        spec[field] = json!(value);
        let err = api
            .create(&PostParams::default(), &volume("bad", spec))
            .await
            .unwrap_err();
        match err {
            kube::Error::Api(s) => {
                assert_eq!(s.code, 422, "{field}={value}: {s:?}");
                assert!(
                    s.message.contains(&format!("spec.{field}")),
                    "{field}={value}: {}",
                    s.message
                );
            }
            other => panic!("{field}={value}: expected a 422, got {other}"),
        }
    }
    assert!(
        api.list(&Default::default()).await.unwrap().items.is_empty(),
        "nothing was stored"
    );
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
        observed_generation: Some(1),
        conditions: vec![ready("True", "Bound")],
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
            json!({"app": app, "containerPath": "/data", "hostPath": "/data"}),
        ),
    )
    .await
    .unwrap();
    let status = json!({"apiVersion": "berth.dev/v1alpha1", "kind": "StatefulLocalVolume",
        "status": {"phase": "Bound", "host": "node-3", "hostPath": "/containerdata/user-toto/data",
                   "conditions": [ready("True", "Bound")]}});
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
    assert_eq!(header, ["NAME", "APP", "HOST", "PHASE", "READY", "AGE"]);
    let row: Vec<_> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(&row[..5], ["data", app.as_str(), "node-3", "Bound", "True"]);

    // `-o wide` adds why and where.
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
            "NAME", "APP", "HOST", "PHASE", "READY", "AGE", "REASON", "HOSTPATH"
        ]
    );
    let row: Vec<_> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(&row[6..], ["Bound", "/containerdata/user-toto/data"]);

    // The short name and the category work too.
    let out = kubectl()
        .args(["get", "berth", "-n", &ns, "-o", "name"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        "statefullocalvolume.berth.dev/data"
    );

    // kubectl explain reads the OpenAPI document, which the apiserver republishes a moment after
    // the CRD changes; 1.20 serves only OpenAPI v2.
    let mut text = String::new();
    for _ in 0..50 {
        let out = kubectl()
            .args(["explain", "slv.spec.hostPath", "--output=plaintext-openapiv2"])
            .output()
            .unwrap();
        text = String::from_utf8(out.stdout).unwrap();
        if text.contains("FIELD") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(
        text.contains("Path of the data relative to the tenant's root"),
        "{text}"
    );
}
