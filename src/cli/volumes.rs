//! The commands' only I/O: reading, patching and watching StatefulLocalVolumes.

use std::collections::{BTreeMap, BTreeSet};

use futures::{StreamExt, pin_mut};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::Value;
use tokio::time::Instant;

use super::{
    Error,
    plan::key,
    progress::{Lines, Target, WaitState, wait_state},
};
use crate::crd::StatefulLocalVolume;

/// Field manager of the commands' patches (shown in `kubectl get --show-managed-fields`).
const FIELD_MANAGER: &str = "berth-cli";
/// How often a patch is tried again after the volume changed under it (409 Conflict).
const ATTEMPTS: usize = 5;

fn kube_error(what: String) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube { what, source }
}

/// The volume `name` in `api`'s namespace; `None` when there is none.
pub async fn get(api: &Api<StatefulLocalVolume>, name: &str) -> Result<Option<StatefulLocalVolume>, Error> {
    api.get_opt(name)
        .await
        .map_err(kube_error(format!("read StatefulLocalVolume {name}")))
}

/// Every volume `api` sees (one namespace, or all).
pub async fn list(api: &Api<StatefulLocalVolume>) -> Result<Vec<StatefulLocalVolume>, Error> {
    let list = api.list(&ListParams::default()).await;
    Ok(list
        .map_err(kube_error("list StatefulLocalVolumes".into()))?
        .items)
}

/// What [`patch`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Patched {
    Changed,
    /// The spec already said so.
    Unchanged,
    /// The volume is gone.
    Gone,
}

/// Applies `make(volume)` (a merge patch carrying the volume's resourceVersion) to `volume`;
/// when the volume changed since it was read, reads it again and retries.
pub async fn patch(
    api: &Api<StatefulLocalVolume>,
    volume: &StatefulLocalVolume,
    make: impl Fn(&StatefulLocalVolume) -> Option<Value>,
) -> Result<Patched, Error> {
    let name = volume.name_any();
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    let mut current = volume.clone();
    for _ in 0..ATTEMPTS {
        let Some(body) = make(&current) else {
            return Ok(Patched::Unchanged);
        };
        match api.patch(&name, &params, &Patch::Merge(&body)).await {
            Ok(_) => return Ok(Patched::Changed),
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Patched::Gone),
            Err(kube::Error::Api(s)) if s.code == 409 => match get(api, &name).await? {
                Some(v) => current = v,
                None => return Ok(Patched::Gone),
            },
            Err(e) => return Err(kube_error(format!("patch {}", key(volume)))(e)),
        }
    }
    Err(Error::Conflict(key(volume)))
}

/// How a wait ended.
#[derive(Debug)]
pub enum WaitEnd {
    /// Every volume reached the target; their last state.
    Done(Vec<StatefulLocalVolume>),
    /// (volume, message) of the stalled volumes.
    Stalled(Vec<(String, String)>),
    /// The deadline passed.
    TimedOut,
    /// Every volume waited for was deleted.
    AllGone,
}

/// Whether the apiserver refused the watch to this user (trying again cannot help).
fn is_denied(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s.code == 401 || s.code == 403,
        _ => false,
    }
}

/// Watches the volumes `names` of `api`'s namespace until they all reach `target`, one stalls, or
/// `deadline` passes, printing a line whenever one of them changes.
pub async fn wait(
    api: Api<StatefulLocalVolume>,
    names: &BTreeSet<String>,
    target: Target<'_>,
    deadline: Instant,
    lines: &mut Lines,
) -> Result<WaitEnd, Error> {
    let mut names = names.clone();
    let namespace = api.namespace().unwrap_or_default().to_owned();
    let events = watcher(api, watcher::Config::default()).default_backoff();
    pin_mut!(events);
    let mut seen: BTreeMap<String, StatefulLocalVolume> = BTreeMap::new();
    let mut listing: Option<BTreeMap<String, StatefulLocalVolume>> = None;
    let mut listed = false;
    loop {
        let event = match tokio::time::timeout_at(deadline, events.next()).await {
            Err(_) => return Ok(WaitEnd::TimedOut),
            Ok(None) => return Err(Error::WatchEnded(namespace)),
            Ok(Some(Err(e))) if is_denied(&e) => return Err(Error::Watch { namespace, source: e }),
            Ok(Some(Err(e))) => {
                eprintln!("berth: watching namespace {namespace} failed, trying again: {e}");
                continue;
            }
            Ok(Some(Ok(event))) => event,
        };
        match event {
            watcher::Event::Init => listing = Some(BTreeMap::new()),
            watcher::Event::InitApply(v) if names.contains(&v.name_any()) => {
                listing.get_or_insert_default().insert(v.name_any(), v);
            }
            watcher::Event::InitDone => {
                seen = listing.take().unwrap_or_default();
                for name in names.iter().filter(|n| !seen.contains_key(*n)) {
                    println!("{namespace}/{name}  deleted");
                }
                names.retain(|n| seen.contains_key(n));
                listed = true;
            }
            watcher::Event::Apply(v) if names.contains(&v.name_any()) => {
                seen.insert(v.name_any(), v);
            }
            watcher::Event::Delete(v) if names.remove(&v.name_any()) => {
                seen.remove(&v.name_any());
                println!("{}  deleted", key(&v));
            }
            _ => {}
        }
        if !listed {
            continue;
        }
        if names.is_empty() {
            return Ok(WaitEnd::AllGone);
        }
        for line in seen.values().filter_map(|v| lines.changed(v)) {
            println!("{line}");
        }
        match wait_state(seen.values(), target) {
            WaitState::Waiting => {}
            WaitState::Done => return Ok(WaitEnd::Done(seen.into_values().collect())),
            WaitState::Stalled(stalled) => return Ok(WaitEnd::Stalled(stalled)),
        }
    }
}
