use kube::runtime::reflector::store::Writer;
use serde_json::json;

use super::*;

fn volume(ns: &str, name: &str, app: &str, host_path: &str) -> StatefulLocalVolume {
    versioned(ns, name, app, host_path, 1)
}

fn versioned(ns: &str, name: &str, app: &str, host_path: &str, generation: i64) -> StatefulLocalVolume {
    serde_json::from_value(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "StatefulLocalVolume",
        "metadata": {"name": name, "namespace": ns, "generation": generation},
        "spec": {"app": app, "containerPath": "/d", "hostPath": host_path},
    }))
    .unwrap()
}

/// A store and a cache fed the same events, as the controller's stream does.
fn feed(
    writer: &mut Writer<StatefulLocalVolume>,
    cache: &VolumeCache,
    ev: watcher::Event<StatefulLocalVolume>,
) -> Vec<String> {
    writer.apply_watcher_event(&ev);
    cache.observe(&None, &ev)
}

fn names(v: Vec<Arc<StatefulLocalVolume>>) -> Vec<String> {
    let mut n: Vec<String> = v.iter().filter_map(|v| v.metadata.name.clone()).collect();
    n.sort();
    n
}

fn listed(
    writer: &mut Writer<StatefulLocalVolume>,
    cache: &VolumeCache,
    objs: Vec<StatefulLocalVolume>,
) -> Vec<String> {
    feed(writer, cache, watcher::Event::Init);
    for o in objs {
        feed(writer, cache, watcher::Event::InitApply(o));
    }
    feed(writer, cache, watcher::Event::InitDone)
}

#[test]
fn follows_lists_updates_and_deletes() {
    let mut writer = Writer::default();
    let cache = VolumeCache::new(vec![(None, writer.as_reader())]);
    feed(&mut writer, &cache, watcher::Event::Init);
    feed(
        &mut writer,
        &cache,
        watcher::Event::InitApply(volume("t", "a", "/t/web", "/data/a")),
    );
    feed(
        &mut writer,
        &cache,
        watcher::Event::InitApply(volume("t", "b", "/t/web", "/logs")),
    );
    assert!(
        cache.of_app("/t/web").is_empty(),
        "nothing until the list is complete"
    );
    assert_eq!(feed(&mut writer, &cache, watcher::Event::InitDone), ["/t/web"]);
    assert_eq!(names(cache.of_app("/t/web")), ["a", "b"]);
    assert_eq!(names(cache.sharing_first_component("/data/x/y")), ["a"]);

    // An update that moves a volume to another app and path leaves no stale entry, and passes
    // both apps: the one it left and the one it names now.
    let moved = feed(
        &mut writer,
        &cache,
        watcher::Event::Apply(versioned("t", "b", "/t/db", "/data", 2)),
    );
    assert_eq!(moved, ["/t/db", "/t/web"]);
    assert_eq!(names(cache.of_app("/t/web")), ["a"]);
    assert_eq!(names(cache.of_app("/t/db")), ["b"]);
    assert_eq!(names(cache.sharing_first_component("/data")), ["a", "b"]);
    assert!(cache.sharing_first_component("/logs").is_empty());

    let gone = feed(
        &mut writer,
        &cache,
        watcher::Event::Delete(volume("t", "a", "/t/web", "/data/a")),
    );
    assert_eq!(gone, ["/t/web"]);
    assert!(cache.of_app("/t/web").is_empty());
    assert_eq!(names(cache.all()), ["b"]);

    // A relist replaces everything: what is gone from the list is gone from the index, and the
    // apps of what changed are passed.
    feed(&mut writer, &cache, watcher::Event::Init);
    feed(
        &mut writer,
        &cache,
        watcher::Event::InitApply(volume("u", "c", "/u/web", "/data")),
    );
    assert_eq!(
        names(cache.of_app("/t/db")),
        ["b"],
        "the old view holds until the relist is done"
    );
    assert_eq!(
        feed(&mut writer, &cache, watcher::Event::InitDone),
        ["/t/db", "/u/web"]
    );
    assert!(cache.of_app("/t/db").is_empty());
    assert_eq!(names(cache.sharing_first_component("/data")), ["c"]);
    assert_eq!(cache.apps(), ["/u/web"]);
}

#[test]
fn status_only_changes_pass_nothing_but_spec_edits_deletion_and_finalizers_do() {
    let mut writer = Writer::default();
    let cache = VolumeCache::new(vec![(None, writer.as_reader())]);
    listed(&mut writer, &cache, vec![volume("t", "a", "/t/web", "/data")]);

    // berth's own status write (or anyone's): same generation, same finalizers.
    let mut with_status = volume("t", "a", "/t/web", "/data");
    with_status.metadata.resource_version = Some("99".into());
    with_status.status = Some(Default::default());
    assert!(feed(&mut writer, &cache, watcher::Event::Apply(with_status)).is_empty());

    // A spec edit bumps the generation.
    let edited = versioned("t", "a", "/t/web", "/data", 2);
    assert_eq!(
        feed(&mut writer, &cache, watcher::Event::Apply(edited)),
        ["/t/web"]
    );

    // The finalizer berth adds, or someone removes.
    let mut finalized = versioned("t", "a", "/t/web", "/data", 2);
    finalized.metadata.finalizers = Some(vec!["berth.dev/volume".into()]);
    assert_eq!(
        feed(&mut writer, &cache, watcher::Event::Apply(finalized.clone())),
        ["/t/web"]
    );

    // Deletion: the apiserver sets deletionTimestamp and bumps the generation.
    let mut deleting = finalized;
    deleting.metadata.generation = Some(3);
    deleting.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(1).unwrap(),
    ));
    assert_eq!(
        feed(&mut writer, &cache, watcher::Event::Apply(deleting)),
        ["/t/web"]
    );

    // A relist that shows nothing new passes nothing.
    assert!(
        listed(
            &mut writer,
            &cache,
            vec![{
                let mut v = versioned("t", "a", "/t/web", "/data", 3);
                v.metadata.finalizers = Some(vec!["berth.dev/volume".into()]);
                v
            }]
        )
        .is_empty()
    );
}

#[test]
fn first_components() {
    assert_eq!(first_component("/data/x"), "data");
    assert_eq!(first_component("//data"), "data");
    assert_eq!(first_component("/"), "");
}

#[test]
fn a_relist_of_one_namespace_keeps_the_others() {
    let mut wa = Writer::default();
    let mut wb = Writer::default();
    let (a, b) = (Some("a".to_owned()), Some("b".to_owned()));
    let cache = VolumeCache::new(vec![(a.clone(), wa.as_reader()), (b.clone(), wb.as_reader())]);
    let feed_in =
        |w: &mut Writer<StatefulLocalVolume>, scope: &Scope, ev: watcher::Event<StatefulLocalVolume>| {
            w.apply_watcher_event(&ev);
            cache.observe(scope, &ev)
        };
    for (w, scope, ns) in [(&mut wa, &a, "a"), (&mut wb, &b, "b")] {
        feed_in(w, scope, watcher::Event::Init);
        feed_in(
            w,
            scope,
            watcher::Event::InitApply(volume(ns, "v", &format!("/{ns}/web"), "/data")),
        );
        feed_in(w, scope, watcher::Event::InitDone);
    }
    assert_eq!(names(cache.sharing_first_component("/data")), ["v", "v"]);
    // Namespace a relists with nothing in it: only a's volume goes.
    feed_in(&mut wa, &a, watcher::Event::Init);
    assert_eq!(feed_in(&mut wa, &a, watcher::Event::InitDone), ["/a/web"]);
    assert!(cache.of_app("/a/web").is_empty());
    assert_eq!(names(cache.of_app("/b/web")), ["v"]);
}
