use serde_json::json;

use super::*;
use crate::marathon::app::AppUpdate;

fn user_app() -> App {
    serde_json::from_value(json!({
        "id": "/toto/web", "cmd": "serve", "instances": 1, "env": {"A": "1"},
        "container": {
            "type": "DOCKER",
            "docker": {"image": "web:1", "parameters": [{"key": "user", "value": "1000:1000"}]},
            "volumes": [{"containerPath": "/cache", "hostPath": "/tmp/cache", "mode": "RW"}],
            "portMappings": [{"containerPort": 80, "hostPort": 0}]
        },
        "constraints": [["rack", "GROUP_BY"]],
        "labels": {"team": "toto"},
        "upgradeStrategy": {"minimumHealthCapacity": 1.0, "maximumOverCapacity": 1.0},
        "version": "2026-01-01T00:00:00.000Z"
    }))
    .unwrap()
}

fn vol(path: &str) -> MountedVolume {
    MountedVolume {
        container_path: path.into(),
        host_path: format!("/containerdata/user-toto{path}"),
        read_only: false,
        allow_concurrent_writers: false,
    }
}

fn json_of(app: &App) -> serde_json::Value {
    serde_json::to_value(app).unwrap()
}

#[test]
fn adds_volumes_pin_strategy_and_labels_and_keeps_the_rest() {
    let app = desired_app(
        &user_app(),
        &[vol("/data"), vol("/etc/localtime")],
        Some("node-1"),
    )
    .unwrap();
    let j = json_of(&app);
    assert_eq!(
        j["container"]["volumes"],
        json!([
            {"containerPath": "/cache", "hostPath": "/tmp/cache", "mode": "RW"},
            {"containerPath": "/data", "hostPath": "/containerdata/user-toto/data", "mode": "RW"},
            {"containerPath": "/etc/localtime", "hostPath": "/containerdata/user-toto/etc/localtime", "mode": "RW"},
        ])
    );
    let constraints: Vec<_> = app.constraints.as_ref().unwrap().iter().cloned().collect();
    assert!(constraints.contains(&Constraint::hostname_cluster("node-1")));
    assert!(constraints.contains(&Constraint::new("rack", "GROUP_BY", None)));
    assert_eq!(
        j["upgradeStrategy"],
        json!({"minimumHealthCapacity": 0.0, "maximumOverCapacity": 0.0})
    );
    assert_eq!(j["labels"]["berth.dev/volumes"], "/data,/etc/localtime");
    assert_eq!(j["labels"]["berth.dev/host"], "node-1");
    assert_eq!(j["labels"]["berth.dev/upgrade-strategy-before"], "1/1");
    assert_eq!(j["labels"]["team"], "toto");
    // The user's fields are untouched.
    for key in ["cmd", "env", "instances", "version"] {
        assert_eq!(j[key], json_of(&user_app())[key], "{key}");
    }
    assert_eq!(
        j["container"]["docker"],
        json_of(&user_app())["container"]["docker"]
    );
    assert_eq!(
        j["container"]["portMappings"],
        json_of(&user_app())["container"]["portMappings"]
    );
}

#[test]
fn a_second_pass_changes_nothing() {
    let once = desired_app(&user_app(), &[vol("/data")], Some("node-1")).unwrap();
    let twice = desired_app(&once, &[vol("/data")], Some("node-1")).unwrap();
    assert_eq!(once, twice);
    assert_eq!(AppUpdate::between(&once, &twice), None);
}

#[test]
fn volume_order_is_kept_so_tasks_do_not_restart_for_a_reorder() {
    let mut app = desired_app(&user_app(), &[vol("/b"), vol("/a")], Some("node-1")).unwrap();
    // Someone moved the user's volume to the end; berth leaves the order alone.
    let vols = app.container.as_mut().unwrap().volumes.as_mut().unwrap();
    let first = vols.remove(0);
    vols.push(first);
    let again = desired_app(&app, &[vol("/a"), vol("/b")], Some("node-1")).unwrap();
    assert_eq!(again, app);
    // A new volume goes to the end.
    let more = desired_app(&app, &[vol("/a"), vol("/b"), vol("/0")], Some("node-1")).unwrap();
    let paths: Vec<_> = more.host_volumes().map(|v| v.container_path.as_str()).collect();
    assert_eq!(paths, ["/a", "/b", "/cache", "/0"]);
}

#[test]
fn removing_every_volume_restores_the_users_app() {
    let with = desired_app(&user_app(), &[vol("/data")], Some("node-1")).unwrap();
    let without = desired_app(&with, &[], None).unwrap();
    assert_eq!(json_of(&without), json_of(&user_app()));
    // Same for an app that had no strategy, constraints, labels or volumes at all.
    let bare = App::docker("/toto/bare", "img", 1);
    let with = desired_app(&bare, &[vol("/data")], Some("node-1")).unwrap();
    let without = desired_app(&with, &[], None).unwrap();
    let mut expected = json_of(&bare);
    expected["upgradeStrategy"] = json!({"minimumHealthCapacity": 1.0, "maximumOverCapacity": 1.0});
    expected["container"]["volumes"] = json!([]);
    expected["constraints"] = json!([]);
    expected["labels"] = json!({});
    assert_eq!(json_of(&without), expected);
}

#[test]
fn removing_one_volume_keeps_the_others_and_the_pin() {
    let with = desired_app(&user_app(), &[vol("/a"), vol("/b")], Some("node-1")).unwrap();
    let less = desired_app(&with, &[vol("/b")], Some("node-1")).unwrap();
    let paths: Vec<_> = less.host_volumes().map(|v| v.container_path.as_str()).collect();
    assert_eq!(paths, ["/cache", "/b"]);
    assert_eq!(less.labels.as_ref().unwrap()[LABEL_VOLUMES], "/b");
    assert!(
        less.constraints
            .as_ref()
            .unwrap()
            .contains(&Constraint::hostname_cluster("node-1"))
    );
}

#[test]
fn drift_is_repaired() {
    let good = desired_app(&user_app(), &[vol("/data")], Some("node-1")).unwrap();
    let mut drifted = good.clone();
    drifted.constraints = Some(
        drifted
            .constraints
            .unwrap()
            .iter()
            .filter(|c| c.pinned_host().is_none())
            .cloned()
            .collect(),
    );
    drifted
        .container
        .as_mut()
        .unwrap()
        .volumes
        .as_mut()
        .unwrap()
        .retain(|v| !matches!(v, Volume::Host(h) if h.container_path == "/data"));
    assert_eq!(
        desired_app(&drifted, &[vol("/data")], Some("node-1")).unwrap(),
        good
    );
}

#[test]
fn read_only_is_mode_ro() {
    let ro = MountedVolume {
        read_only: true,
        ..vol("/etc/localtime")
    };
    let app = desired_app(&user_app(), &[ro], Some("node-1")).unwrap();
    assert_eq!(app.host_volumes().last().unwrap().mode, VolumeMode::ReadOnly);
}

#[test]
fn concurrent_writers_keep_the_users_strategy() {
    let shared = MountedVolume {
        allow_concurrent_writers: true,
        ..vol("/data")
    };
    let app = desired_app(&user_app(), &[shared], Some("node-1")).unwrap();
    assert_eq!(app.upgrade_strategy, user_app().upgrade_strategy);
    assert!(!app.labels.unwrap().contains_key(LABEL_UPGRADE_BEFORE));
}

#[test]
fn refuses_to_shadow_a_users_volume_or_fight_a_users_pin() {
    let err = desired_app(&user_app(), &[vol("/cache")], Some("node-1")).unwrap_err();
    assert_eq!(
        err,
        PatchError::ContainerPathTaken {
            app: "/toto/web".into(),
            path: "/cache".into()
        }
    );
    let mut pinned = user_app();
    pinned
        .constraints
        .as_mut()
        .unwrap()
        .insert(Constraint::hostname_cluster("node-2"));
    let err = desired_app(&pinned, &[vol("/data")], Some("node-1")).unwrap_err();
    assert!(matches!(err, PatchError::PinnedElsewhere { .. }));
    // A user pin to the same host is fine.
    pinned.constraints = Some([Constraint::hostname_cluster("node-1")].into_iter().collect());
    assert!(desired_app(&pinned, &[vol("/data")], Some("node-1")).is_ok());
    let mut no_container = user_app();
    no_container.container = None;
    assert!(matches!(
        desired_app(&no_container, &[vol("/data")], Some("n")),
        Err(PatchError::NoContainer(_))
    ));
}
