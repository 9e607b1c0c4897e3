use serde_json::json;

use super::*;

/// Volume `ns/name` of app `app` with `placement` and, when bound, `status.host`.
fn vol(ns_name: &str, app: &str, placement: Value, host: Option<&str>) -> StatefulLocalVolume {
    let (ns, name) = ns_name.split_once('/').unwrap();
    let mut v: StatefulLocalVolume = serde_json::from_value(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "StatefulLocalVolume",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": "42", "generation": 3},
        "spec": {"app": app, "containerPath": "/data", "hostPath": "/data", "placement": placement},
    }))
    .unwrap();
    if let Some(h) = host {
        v.status = Some(serde_json::from_value(json!({"host": h})).unwrap());
    }
    v
}

/// Volume `toto/name` of app /toto/db.
fn db(name: &str, placement: Value, host: Option<&str>) -> StatefulLocalVolume {
    vol(&format!("toto/{name}"), "/toto/db", placement, host)
}

fn moving(mut v: StatefulLocalVolume, from: &str, to: &str) -> StatefulLocalVolume {
    let m = json!({"from": from, "to": to, "id": "m1", "step": "Copying", "pass": 1});
    v.status.get_or_insert_default().migration = Some(serde_json::from_value(m).unwrap());
    v
}

fn deleting(mut v: StatefulLocalVolume) -> StatefulLocalVolume {
    v.metadata.deletion_timestamp = serde_json::from_value(json!("2026-01-01T00:00:00Z")).unwrap();
    v
}

#[test]
fn the_volumes_of_an_app_are_those_of_its_namespace_with_the_same_app() {
    let all = [
        db("logs", json!({}), Some("node-1")),
        db("data", json!({}), Some("node-1")),
        vol("toto/web", "/toto/web", json!({}), Some("node-1")),
        vol("titi/data", "/toto/db", json!({}), Some("node-1")),
    ];
    let names: Vec<String> = app_volumes(&all, "toto", "/toto/db")
        .iter()
        .map(|v| key(v))
        .collect();
    assert_eq!(names, ["toto/data", "toto/logs"]);
}

#[test]
fn migrate_sets_the_host_removes_it_from_avoid_hosts_and_carries_the_resource_version() {
    let v = db("db", json!({"avoidHosts": ["node-2", "node-3"]}), Some("node-1"));
    let expected = json!({
        "metadata": {"resourceVersion": "42"},
        "spec": {"placement": {"host": "node-2", "avoidHosts": ["node-3"]}},
    });
    assert_eq!(migrate_patch(&v, "node-2").unwrap(), expected);
    // The last avoided host goes: the field is removed, not left empty.
    let v = db("db", json!({"avoidHosts": ["node-2"]}), Some("node-1"));
    let patch = migrate_patch(&v, "node-2").unwrap();
    assert_eq!(patch["spec"]["placement"]["avoidHosts"], Value::Null);
    // Without placement, and without avoidHosts to change: only the host.
    let v = db("db", Value::Null, Some("node-1"));
    let patch = migrate_patch(&v, "node-2").unwrap();
    assert_eq!(patch["spec"], json!({"placement": {"host": "node-2"}}));
}

#[test]
fn migrate_patches_nothing_when_the_spec_already_says_so() {
    let v = db(
        "db",
        json!({"host": "node-2", "avoidHosts": ["node-3"]}),
        Some("node-1"),
    );
    assert_eq!(migrate_patch(&v, "node-2"), None);
}

#[test]
fn drain_adds_the_host_to_avoid_hosts_and_removes_it_as_placement_host() {
    let v = db(
        "db",
        json!({"host": "node-1", "avoidHosts": ["node-9"]}),
        Some("node-1"),
    );
    let expected = json!({
        "metadata": {"resourceVersion": "42"},
        "spec": {"placement": {"host": null, "avoidHosts": ["node-9", "node-1"]}},
    });
    assert_eq!(drain_patch(&v, "node-1").unwrap(), expected);
    // Another requested host is kept.
    let v = db("db", json!({"host": "node-2"}), Some("node-1"));
    let patch = drain_patch(&v, "node-1").unwrap();
    assert_eq!(patch["spec"], json!({"placement": {"avoidHosts": ["node-1"]}}));
    // Done already.
    let v = db("db", json!({"avoidHosts": ["node-1"]}), Some("node-1"));
    assert_eq!(drain_patch(&v, "node-1"), None);
}

#[test]
fn host_names_are_checked_as_the_crd_does() {
    assert_eq!(parse_host("node-2").unwrap(), "node-2");
    assert_eq!(parse_host("10.0.2.148").unwrap(), "10.0.2.148");
    for bad in ["", "-node", "node-", "node_2", "node 2", &"a".repeat(254)] {
        let e = parse_host(bad).unwrap_err();
        assert!(e.contains("must be a host name"), "{bad:?}: {e}");
    }
}

#[test]
fn migrate_refuses_unbound_and_deleted_volumes() {
    let unbound = db("db", json!({}), None);
    let e = decide_migrate(&unbound, &[&unbound], "node-2").unwrap_err();
    assert!(matches!(e, Refusal::NotBound { .. }));
    let text = e.to_string();
    let says = "toto/db is not bound to a host yet: set spec.placement.host instead";
    assert!(text.contains(says), "{text}");
    let how = r#"kubectl patch slv -n toto db --type merge -p '{"spec":{"placement":{"host":"node-2"}}}'"#;
    assert!(text.contains(how), "{text}");

    let gone = deleting(db("db", json!({}), Some("node-1")));
    let e = decide_migrate(&gone, &[&gone], "node-2").unwrap_err();
    assert_eq!(
        e.to_string(),
        "toto/db is being deleted: there is nothing to move"
    );
}

#[test]
fn migrate_knows_when_the_app_is_already_there() {
    let data = db("data", json!({"host": "node-2"}), Some("node-2"));
    let logs = db("logs", json!({"host": "node-2"}), Some("node-2"));
    let from_node_2 = Ok(MigrateDecision::Move {
        from: "node-2".into(),
    });
    assert_eq!(
        decide_migrate(&data, &[&data, &logs], "node-2"),
        Ok(MigrateDecision::AlreadyThere)
    );
    // A move away is under way: moving back is a move.
    let away = moving(data.clone(), "node-2", "node-3");
    assert_eq!(decide_migrate(&away, &[&away, &logs], "node-2"), from_node_2);
    // There, but the spec of another volume would send the app elsewhere: it is patched.
    let elsewhere = db("logs", json!({"host": "node-3"}), Some("node-2"));
    assert_eq!(decide_migrate(&data, &[&data, &elsewhere], "node-2"), from_node_2);
    // There, but avoiding the host.
    let avoiding = db(
        "logs",
        json!({"host": "node-2", "avoidHosts": ["node-2"]}),
        Some("node-2"),
    );
    assert_eq!(decide_migrate(&data, &[&data, &avoiding], "node-2"), from_node_2);
    // Elsewhere.
    assert_eq!(decide_migrate(&data, &[&data], "node-1"), from_node_2);
}

#[test]
fn drain_groups_apps_with_a_volume_on_moving_or_asking_for_the_host() {
    let all = [
        db("db-data", json!({}), Some("node-1")),
        db("db-logs", json!({}), Some("node-1")),
        deleting(db("db-old", json!({}), Some("node-1"))),
        vol("toto/web", "/toto/web", json!({}), Some("node-2")),
        moving(
            vol(
                "titi/cache",
                "/titi/cache",
                json!({"host": "node-2"}),
                Some("node-1"),
            ),
            "node-1",
            "node-2",
        ),
        moving(
            vol("titi/in", "/titi/in", json!({"host": "node-1"}), Some("node-3")),
            "node-3",
            "node-1",
        ),
        vol("titi/new", "/titi/new", json!({"host": "node-1"}), None),
        vol("titi/free", "/titi/free", json!({}), None),
    ];
    let groups = drain_groups(&all, "node-1");
    let found: Vec<String> = groups
        .iter()
        .map(|g| {
            format!(
                "{} {}: {}",
                g.namespace,
                g.app,
                g.volumes
                    .iter()
                    .map(|v| v.name_any())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        })
        .collect();
    let expected = [
        "titi /titi/cache: cache",
        "titi /titi/in: in",
        "titi /titi/new: new",
        "toto /toto/db: db-data,db-logs",
    ];
    assert_eq!(found, expected);
    assert_eq!(groups[2].bound(), Vec::<String>::new());
    assert_eq!(groups[3].bound(), ["db-data", "db-logs"]);
}
