use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use serde_json::json;

use super::*;
use crate::crd::StatefulLocalVolumeStatus;

fn claim(name: &str, path: &str, read_only: bool) -> Claim {
    Claim {
        name: name.into(),
        host_path: VolumePath::parse(path).unwrap(),
        read_only,
    }
}

#[test]
fn a_path_inside_another_volume_conflicts_whatever_its_mode() {
    for outer_ro in [false, true] {
        let msg = nested_conflict(
            &claim("t/b", "/data/sub", false),
            &claim("t/a", "/data", outer_ro),
        )
        .unwrap();
        assert!(msg.contains("/data/sub lies inside /data"), "{msg}");
        assert!(msg.contains("t/a"));
        let msg =
            nested_conflict(&claim("t/b", "/data", true), &claim("t/a", "/data/sub", outer_ro)).unwrap();
        assert!(msg.contains("/data contains /data/sub"), "{msg}");
    }
}

#[test]
fn siblings_and_look_alikes_are_fine() {
    assert_eq!(
        nested_conflict(&claim("t/b", "/database", false), &claim("t/a", "/data", false)),
        None
    );
    assert_eq!(
        nested_conflict(&claim("t/b", "/b", false), &claim("t/a", "/a", false)),
        None
    );
}

#[test]
fn the_same_path_twice_only_when_both_are_read_only() {
    assert!(nested_conflict(&claim("t/b", "/data", true), &claim("t/a", "/data", false)).is_some());
    assert!(nested_conflict(&claim("t/b", "/data", false), &claim("t/a", "/data", true)).is_some());
    assert_eq!(
        nested_conflict(&claim("t/b", "/data", true), &claim("t/a", "/data", true)),
        None
    );
}

#[test]
fn a_bound_volume_keeps_its_host_path() {
    let p = |s: &str| VolumePath::parse(s).unwrap();
    let bound = "/srv/node-1/containerdata/user-toto/a/data";
    assert_eq!(host_path_moved(bound, &p("/a/data"), "user-toto"), None);
    assert_eq!(host_path_moved(bound, &p("//a//data/"), "user-toto"), None);
    for moved in ["/data", "/a/data/x", "/b/data", "/a"] {
        let msg = host_path_moved(bound, &p(moved), "user-toto").unwrap();
        assert!(msg.contains(bound) && msg.contains(moved), "{msg}");
    }
    // The same user path in another tenant's directory is not the same data.
    assert!(host_path_moved(bound, &p("/a/data"), "user-tata").is_some());
    assert!(host_path_moved("/containerdata/user-toto2/a/data", &p("/a/data"), "user-toto").is_some());
}

/// A volume of namespace `ns`, created at second `created`, at `generation`; `admitted` gives it
/// a status saying berth admitted that generation.
fn vol(
    ns: &str,
    name: &str,
    path: &str,
    read_only: bool,
    created: i64,
    generation: i64,
    admitted: bool,
) -> Arc<StatefulLocalVolume> {
    let mut v: StatefulLocalVolume = serde_json::from_value(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "StatefulLocalVolume",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"), "generation": generation,
                     "creationTimestamp": Timestamp::from_second(created).unwrap().to_string()},
        "spec": {"app": format!("/{ns}/web"), "containerPath": format!("/{name}"), "hostPath": path, "readOnly": read_only},
    }))
    .unwrap();
    if admitted {
        v.status = Some(StatefulLocalVolumeStatus {
            observed_generation: Some(generation),
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: "Bound".into(),
                message: String::new(),
                observed_generation: Some(generation),
                last_transition_time: Time(Timestamp::from_second(created).unwrap()),
            }],
            ..Default::default()
        });
    }
    Arc::new(v)
}

fn admit(me: &Arc<StatefulLocalVolume>, all: &[Arc<StatefulLocalVolume>]) -> Result<VolumeRequest, String> {
    let tenants = NamespaceMapping::default();
    let policy = TenantPolicy::default();
    Admission {
        tenants: &tenants,
        policy: &policy,
        neighbours: all,
    }
    .admit(me, None)
}

#[test]
fn an_edit_that_widens_access_is_refused_not_the_older_volume() {
    // Two apps share a read-only dataset at one path.
    let first = vol("toto", "a", "/data", true, 10, 1, true);
    let second = vol("toto", "b", "/data", true, 20, 1, true);
    assert!(admit(&first, &[first.clone(), second.clone()]).is_ok());
    assert!(admit(&second, &[first.clone(), second.clone()]).is_ok());
    // The owner of the older one flips it to read-write: that edit (generation 2, not yet
    // admitted) is refused, whatever its age, and the other keeps working.
    let flipped = vol("toto", "a", "/data", false, 10, 2, false);
    let msg = admit(&flipped, &[flipped.clone(), second.clone()]).unwrap_err();
    assert!(msg.contains("also the host path of volume toto/b"), "{msg}");
    assert!(admit(&second, &[flipped.clone(), second.clone()]).is_ok());
}

#[test]
fn a_volume_being_deleted_still_counts() {
    let mut parent = (*vol("toto", "a", "/data", false, 10, 2, true)).clone();
    parent.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(30).unwrap()));
    let parent = Arc::new(parent);
    let child = vol("toto", "b", "/data/sub", false, 40, 1, false);
    let msg = admit(&child, &[parent, child.clone()]).unwrap_err();
    assert!(msg.contains("lies inside /data"), "{msg}");
}

#[test]
fn two_newcomers_the_later_one_gives_way_and_other_tenants_do_not_count() {
    let first = vol("toto", "a", "/data", false, 10, 1, false);
    let second = vol("toto", "b", "/data/sub", false, 20, 1, false);
    assert!(admit(&first, &[first.clone(), second.clone()]).is_ok());
    assert!(admit(&second, &[first.clone(), second.clone()]).is_err());
    let other_tenant = vol("tata", "c", "/data", false, 5, 1, true);
    assert!(admit(&second, &[other_tenant, second.clone()]).is_ok());
}

#[test]
fn what_is_bound_cannot_move_to_another_app_or_path() {
    let tenants = NamespaceMapping::default();
    let policy = TenantPolicy::default();
    let v = vol("toto", "a", "/data", false, 10, 1, true);
    let a = Admission {
        tenants: &tenants,
        policy: &policy,
        neighbours: &[],
    };
    let toto = TenantId::parse("toto").unwrap();
    let here = Bound {
        app: "/toto/web",
        tenant: &toto,
        host_path: Some("/containerdata/user-toto/data"),
    };
    assert!(a.admit(&v, Some(&here)).is_ok());
    let elsewhere = Bound {
        app: "/toto/batch",
        ..here
    };
    let msg = a.admit(&v, Some(&elsewhere)).unwrap_err();
    assert!(
        msg.contains("spec.app cannot change") && msg.contains("/toto/batch"),
        "{msg}"
    );
    let moved = Bound {
        host_path: Some("/containerdata/user-toto/old"),
        ..here
    };
    assert!(
        a.admit(&v, Some(&moved))
            .unwrap_err()
            .contains("spec.hostPath cannot change")
    );
    let tata = TenantId::parse("tata").unwrap();
    let other_root = Bound {
        tenant: &tata,
        ..here
    };
    assert!(a.admit(&v, Some(&other_root)).unwrap_err().contains("tenant"));
}
