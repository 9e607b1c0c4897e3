//! Writing a volume's status: server-side apply, only when it changes.
//!
//! The controller's cache of volumes lags behind its own writes (a status written while
//! reconciling one volume of an app reaches the cache a moment later), so the status berth last
//! wrote for each volume is remembered here too. Comparing with it keeps a steady state silent:
//! no status write and no repeated event.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;

use super::{
    conditions::{self, Outcome},
    context::Context,
    error::Error,
};
use crate::crd::{StatefulLocalVolume, StatefulLocalVolumeStatus};

/// The field manager of berth's status writes.
pub const FIELD_MANAGER: &str = "berth-controller";

/// The status berth last wrote, by volume uid and generation.
#[derive(Default)]
pub struct Written(Mutex<HashMap<String, (Option<i64>, StatefulLocalVolumeStatus)>>);

impl Written {
    fn get(&self, obj: &StatefulLocalVolume) -> Option<StatefulLocalVolumeStatus> {
        let uid = obj.uid()?;
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&uid)
            .filter(|(generation, _)| *generation == obj.metadata.generation)
            .map(|(_, s)| s.clone())
    }

    fn put(&self, obj: &StatefulLocalVolume, status: StatefulLocalVolumeStatus) {
        if let Some(uid) = obj.uid() {
            let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
            map.insert(uid, (obj.metadata.generation, status));
        }
    }

    pub fn forget(&self, obj: &StatefulLocalVolume) {
        if let Some(uid) = obj.uid() {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&uid);
        }
    }
}

/// The volume's status as berth knows it: what it last wrote, else what the object shows.
pub fn current(ctx: &Context, obj: &StatefulLocalVolume) -> Option<StatefulLocalVolumeStatus> {
    ctx.written.get(obj).or_else(|| obj.status.clone())
}

/// The volume as berth knows it: the status it last wrote is newer than the watched object's.
pub fn fresh(ctx: &Context, obj: &Arc<StatefulLocalVolume>) -> Arc<StatefulLocalVolume> {
    let known = current(ctx, obj);
    if known != obj.status {
        let mut fresher = (**obj).clone();
        fresher.status = known;
        Arc::new(fresher)
    } else {
        obj.clone()
    }
}

/// Server-side applies the status for `outcome` unless it is what the volume already shows.
/// Returns the status the volume had before (what berth last wrote, or the object's own).
pub async fn write(
    ctx: &Context,
    obj: &StatefulLocalVolume,
    outcome: &Outcome,
    host: Option<String>,
    host_path: Option<String>,
) -> Result<Option<StatefulLocalVolumeStatus>, Error> {
    let previous = current(ctx, obj);
    let status = conditions::status(
        outcome,
        obj.metadata.generation,
        host,
        host_path,
        previous.as_ref(),
        Timestamp::now(),
    );
    if previous.as_ref() == Some(&status) {
        return Ok(previous);
    }
    let ns = obj
        .namespace()
        .ok_or_else(|| Error::NoNamespace(obj.name_any()))?;
    let api: Api<StatefulLocalVolume> = Api::namespaced(ctx.kube.clone(), &ns);
    let body = json!({
        "apiVersion": StatefulLocalVolume::api_version(&()),
        "kind": StatefulLocalVolume::kind(&()),
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(Error::Kube)?;
    ctx.written.put(obj, status);
    Ok(previous)
}
