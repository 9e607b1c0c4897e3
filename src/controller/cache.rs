//! The controller's view of every volume: the reflector's store, plus two indexes kept from the
//! same watch stream — volumes by Marathon app, and by the first component of their host path —
//! and the apps each change of the stream asks to pass.
//!
//! A pass looks at its own app's few volumes, and the overlap rule at the few volumes whose paths
//! could nest with its own, never at every volume in the cluster: with a scan per reconcile,
//! binding 10,000 volumes was quadratic.
//!
//! A change triggers a pass only when kube-runtime's `generation` and `finalizers` predicates say
//! so: spec edits and deletion (which bumps the generation) do, status writes (berth's own, or
//! anyone's) do not.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::{Arc, Mutex, RwLock},
};

use kube::runtime::{
    Predicate, predicates,
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

/// A volume's key in the indexes: its name and namespace only (a reference made with
/// `from_obj` also carries the uid and resourceVersion, twice the bytes, held three times per
/// volume).
fn key(obj: &StatefulLocalVolume) -> Ref {
    let r = ObjectRef::new(obj.metadata.name.as_deref().unwrap_or_default());
    match obj.metadata.namespace.as_deref() {
        Some(ns) => r.within(ns),
        None => r,
    }
}

/// What a volume change must trigger: a spec edit, a deletion, a finalizer change.
fn trigger_hash(obj: &StatefulLocalVolume) -> Option<u64> {
    predicates::generation
        .combine(predicates::finalizers)
        .hash_property(obj)
}

#[derive(Clone, PartialEq, Eq)]
struct Entry {
    namespace: Option<String>,
    /// The app the spec names, and the app berth bound the volume to when that differs (an
    /// edit of `spec.app` holds the volume in its old app).
    apps: BTreeSet<String>,
    first: String,
    trigger: Option<u64>,
    /// The host its status names, and the capacity its spec asks for: what berth promised
    /// that host.
    promise: Option<(String, u64)>,
}

impl Entry {
    fn of(obj: &StatefulLocalVolume) -> Self {
        let recorded = obj.status.as_ref().and_then(|s| s.app.clone());
        Self {
            namespace: obj.metadata.namespace.clone(),
            apps: std::iter::once(obj.spec.app.clone()).chain(recorded).collect(),
            first: first_component(&obj.spec.host_path).to_owned(),
            trigger: trigger_hash(obj),
            promise: promise(obj),
        }
    }
}

/// The capacity a volume holds on its host, until it is deleted.
fn promise(obj: &StatefulLocalVolume) -> Option<(String, u64)> {
    let host = obj.status.as_ref()?.host.clone()?;
    let bytes = crate::crd::validate::parse_bytes(&obj.spec.capacity.as_ref()?.0).ok()?;
    Some((host, bytes))
}

#[derive(Default)]
struct Index {
    by_app: HashMap<String, HashSet<Ref>>,
    by_first: HashMap<String, HashSet<Ref>>,
    entries: HashMap<Ref, Entry>,
    /// Host → capacities promised to the volumes placed there.
    promised: HashMap<String, u64>,
}

impl Index {
    /// Indexes `obj`; returns its previous entry.
    fn insert(&mut self, obj: &StatefulLocalVolume) -> Option<Entry> {
        let r = key(obj);
        let previous = self.remove(&r);
        let entry = Entry::of(obj);
        for app in &entry.apps {
            self.by_app.entry(app.clone()).or_default().insert(r.clone());
        }
        self.by_first
            .entry(entry.first.clone())
            .or_default()
            .insert(r.clone());
        if let Some((host, bytes)) = &entry.promise {
            *self.promised.entry(host.clone()).or_default() += bytes;
        }
        self.entries.insert(r, entry);
        previous
    }

    fn remove(&mut self, r: &Ref) -> Option<Entry> {
        let entry = self.entries.remove(r)?;
        for app in &entry.apps {
            unlink(&mut self.by_app, app, r);
        }
        unlink(&mut self.by_first, &entry.first, r);
        if let Some((host, bytes)) = &entry.promise
            && let Some(sum) = self.promised.get_mut(host)
        {
            *sum = sum.saturating_sub(*bytes);
            if *sum == 0 {
                self.promised.remove(host);
            }
        }
        Some(entry)
    }
}

fn unlink(map: &mut HashMap<String, HashSet<Ref>>, key: &str, r: &Ref) {
    if let Some(set) = map.get_mut(key) {
        set.remove(r);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

/// The apps a change asks to pass: the volume's app, and the one it named before an edit.
fn apps_to_pass(previous: Option<&Entry>, current: Option<&Entry>) -> Vec<String> {
    let changed = match (previous, current) {
        (Some(p), Some(c)) => p.trigger != c.trigger || p.apps != c.apps,
        _ => true,
    };
    if !changed {
        return Vec::new();
    }
    let apps: BTreeSet<String> = previous
        .into_iter()
        .chain(current)
        .flat_map(|e| e.apps.iter().cloned())
        .collect();
    apps.into_iter().collect()
}

/// One watch's scope: a namespace, or every namespace (`None`).
pub type Scope = Option<String>;

pub struct VolumeCache {
    /// The reflector store of each watch.
    stores: Vec<(Scope, Store<StatefulLocalVolume>)>,
    index: RwLock<Index>,
    /// The index of a scope being rebuilt during its (re)list, merged in when it is complete, as
    /// the store does with its own buffer.
    relisting: Mutex<HashMap<Scope, Index>>,
}

impl VolumeCache {
    /// A cache over the stores of the controller's watches (one per watched namespace, or one
    /// for all namespaces).
    pub fn new(stores: Vec<(Scope, Store<StatefulLocalVolume>)>) -> Self {
        Self {
            stores,
            index: RwLock::default(),
            relisting: Mutex::default(),
        }
    }

    /// Follows the watch stream of `scope`: call it with every event, right after the store
    /// applied it. Returns the apps whose volumes changed in a way a pass must see.
    pub fn observe(&self, scope: &Scope, event: &watcher::Event<StatefulLocalVolume>) -> Vec<String> {
        let write = || self.index.write().unwrap_or_else(|e| e.into_inner());
        let mut relisting = self.relisting.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            watcher::Event::Apply(obj) => {
                let previous = write().insert(obj);
                apps_to_pass(previous.as_ref(), Some(&Entry::of(obj)))
            }
            watcher::Event::Delete(obj) => {
                let previous = write().remove(&key(obj));
                apps_to_pass(previous.as_ref(), None)
            }
            watcher::Event::Init => {
                relisting.insert(scope.clone(), Index::default());
                Vec::new()
            }
            watcher::Event::InitApply(obj) => {
                relisting.entry(scope.clone()).or_default().insert(obj);
                Vec::new()
            }
            watcher::Event::InitDone => {
                let Some(fresh) = relisting.remove(scope) else {
                    return Vec::new();
                };
                let mut index = write();
                let in_scope = |e: &Entry| scope.is_none() || e.namespace == *scope;
                // Whatever the list shows differently from before (new, changed, gone).
                let mut apps = BTreeSet::new();
                for (r, entry) in &fresh.entries {
                    apps.extend(apps_to_pass(index.entries.get(r), Some(entry)));
                }
                let gone: Vec<Ref> = index
                    .entries
                    .iter()
                    .filter(|(r, e)| in_scope(e) && !fresh.entries.contains_key(*r))
                    .map(|(r, _)| r.clone())
                    .collect();
                for r in gone {
                    if let Some(e) = index.remove(&r) {
                        apps.extend(e.apps);
                    }
                }
                for obj_ref in fresh.entries.keys() {
                    if let Some(obj) = self.get(obj_ref) {
                        index.insert(&obj);
                    }
                }
                apps.into_iter().collect()
            }
        }
    }

    fn get(&self, r: &Ref) -> Option<Arc<StatefulLocalVolume>> {
        self.stores.iter().find_map(|(_, store)| store.get(r))
    }

    /// The volumes that name `app`, or that berth bound to it.
    pub fn of_app(&self, app: &str) -> Vec<Arc<StatefulLocalVolume>> {
        self.lookup(|i| i.by_app.get(app))
    }

    /// The volumes whose host path starts with the same component as `host_path`.
    pub fn sharing_first_component(&self, host_path: &str) -> Vec<Arc<StatefulLocalVolume>> {
        self.lookup(|i| i.by_first.get(first_component(host_path)))
    }

    /// Every app some volume names (for a full pass after Marathon's event stream reconnects).
    pub fn apps(&self) -> Vec<String> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        index.by_app.keys().cloned().collect()
    }

    /// Capacities promised to the volumes on `host` (deleted volumes count until they are gone).
    pub fn promised_bytes(&self, host: &str) -> u64 {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        index.promised.get(host).copied().unwrap_or(0)
    }

    /// Every volume (for metrics).
    pub fn all(&self) -> Vec<Arc<StatefulLocalVolume>> {
        self.stores.iter().flat_map(|(_, store)| store.state()).collect()
    }

    fn lookup(&self, find: impl Fn(&Index) -> Option<&HashSet<Ref>>) -> Vec<Arc<StatefulLocalVolume>> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        find(&index)
            .into_iter()
            .flatten()
            .filter_map(|r| self.get(r))
            .collect()
    }
}

#[cfg(test)]
mod tests;
