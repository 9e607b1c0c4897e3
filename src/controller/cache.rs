//! The controller's view of every volume: the reflector's store, plus two indexes kept from the
//! same watch stream — volumes by Marathon app, and by the first component of their host path.
//!
//! A reconcile looks at its own app's few volumes, and the overlap rule at the few volumes whose
//! paths could nest with its own, never at every volume in the cluster: with a scan per
//! reconcile, binding 10,000 volumes was quadratic.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, RwLock},
};

use kube::runtime::{
    reflector::{ObjectRef, Store},
    watcher,
};

use crate::crd::StatefulLocalVolume;

type Ref = ObjectRef<StatefulLocalVolume>;

/// The first component of a host path (`/data/x` → `data`): only paths with the same first
/// component can contain one another.
pub fn first_component(host_path: &str) -> &str {
    host_path.split('/').find(|c| !c.is_empty()).unwrap_or("")
}

#[derive(Default)]
struct Index {
    by_app: HashMap<String, HashSet<Ref>>,
    by_first: HashMap<String, HashSet<Ref>>,
    keys: HashMap<Ref, (String, String)>,
}

impl Index {
    fn insert(&mut self, obj: &StatefulLocalVolume) {
        let r = ObjectRef::from_obj(obj);
        self.remove(&r);
        let app = obj.spec.app.clone();
        let first = first_component(&obj.spec.host_path).to_owned();
        self.by_app.entry(app.clone()).or_default().insert(r.clone());
        self.by_first.entry(first.clone()).or_default().insert(r.clone());
        self.keys.insert(r, (app, first));
    }

    fn remove(&mut self, r: &Ref) {
        let Some((app, first)) = self.keys.remove(r) else {
            return;
        };
        for (map, key) in [(&mut self.by_app, app), (&mut self.by_first, first)] {
            if let Some(set) = map.get_mut(&key) {
                set.remove(r);
                if set.is_empty() {
                    map.remove(&key);
                }
            }
        }
    }
}

pub struct VolumeCache {
    store: Store<StatefulLocalVolume>,
    index: RwLock<Index>,
    /// The index being rebuilt during a (re)list, swapped in when it is complete, as the store
    /// does with its own buffer.
    relisting: Mutex<Option<Index>>,
}

impl VolumeCache {
    pub fn new(store: Store<StatefulLocalVolume>) -> Self {
        Self {
            store,
            index: RwLock::default(),
            relisting: Mutex::default(),
        }
    }

    /// Follows the watch stream: call it with every event, right after the store applied it.
    pub fn observe(&self, event: &watcher::Event<StatefulLocalVolume>) {
        let write = || self.index.write().unwrap_or_else(|e| e.into_inner());
        let mut relisting = self.relisting.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            watcher::Event::Apply(obj) => write().insert(obj),
            watcher::Event::Delete(obj) => write().remove(&ObjectRef::from_obj(obj)),
            watcher::Event::Init => *relisting = Some(Index::default()),
            watcher::Event::InitApply(obj) => relisting.get_or_insert_with(Index::default).insert(obj),
            watcher::Event::InitDone => {
                if let Some(fresh) = relisting.take() {
                    *write() = fresh;
                }
            }
        }
    }

    /// The volumes that name `app`.
    pub fn of_app(&self, app: &str) -> Vec<Arc<StatefulLocalVolume>> {
        self.lookup(|i| i.by_app.get(app))
    }

    /// The volumes whose host path starts with the same component as `host_path`.
    pub fn sharing_first_component(&self, host_path: &str) -> Vec<Arc<StatefulLocalVolume>> {
        self.lookup(|i| i.by_first.get(first_component(host_path)))
    }

    /// Every volume (for a full resync after Marathon's event stream reconnects, and metrics).
    pub fn all(&self) -> Vec<Arc<StatefulLocalVolume>> {
        self.store.state()
    }

    fn lookup(&self, find: impl Fn(&Index) -> Option<&HashSet<Ref>>) -> Vec<Arc<StatefulLocalVolume>> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        find(&index)
            .into_iter()
            .flatten()
            .filter_map(|r| self.store.get(r))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::reflector::store::Writer;
    use serde_json::json;

    use super::*;

    fn volume(ns: &str, name: &str, app: &str, host_path: &str) -> StatefulLocalVolume {
        serde_json::from_value(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "StatefulLocalVolume",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"app": app, "containerPath": "/d", "hostPath": host_path},
        }))
        .unwrap()
    }

    /// A store and a cache fed the same events, as the controller's stream does.
    fn feed(
        writer: &mut Writer<StatefulLocalVolume>,
        cache: &VolumeCache,
        ev: watcher::Event<StatefulLocalVolume>,
    ) {
        writer.apply_watcher_event(&ev);
        cache.observe(&ev);
    }

    fn names(v: Vec<Arc<StatefulLocalVolume>>) -> Vec<String> {
        let mut n: Vec<String> = v.iter().filter_map(|v| v.metadata.name.clone()).collect();
        n.sort();
        n
    }

    #[test]
    fn follows_lists_updates_and_deletes() {
        let mut writer = Writer::default();
        let cache = VolumeCache::new(writer.as_reader());
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
        feed(&mut writer, &cache, watcher::Event::InitDone);
        assert_eq!(names(cache.of_app("/t/web")), ["a", "b"]);
        assert_eq!(names(cache.sharing_first_component("/data/x/y")), ["a"]);

        // An update that moves a volume to another app and path leaves no stale entry.
        feed(
            &mut writer,
            &cache,
            watcher::Event::Apply(volume("t", "b", "/t/db", "/data")),
        );
        assert_eq!(names(cache.of_app("/t/web")), ["a"]);
        assert_eq!(names(cache.of_app("/t/db")), ["b"]);
        assert_eq!(names(cache.sharing_first_component("/data")), ["a", "b"]);
        assert!(cache.sharing_first_component("/logs").is_empty());

        feed(
            &mut writer,
            &cache,
            watcher::Event::Delete(volume("t", "a", "/t/web", "/data/a")),
        );
        assert!(cache.of_app("/t/web").is_empty());
        assert_eq!(names(cache.all()), ["b"]);

        // A relist replaces everything: what is gone from the list is gone from the index.
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
        feed(&mut writer, &cache, watcher::Event::InitDone);
        assert!(cache.of_app("/t/db").is_empty());
        assert_eq!(names(cache.sharing_first_component("/data")), ["c"]);
    }

    #[test]
    fn first_components() {
        assert_eq!(first_component("/data/x"), "data");
        assert_eq!(first_component("//data"), "data");
        assert_eq!(first_component("/"), "");
    }
}
