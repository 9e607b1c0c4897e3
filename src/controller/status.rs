//! What berth last wrote to each volume's status.
//!
//! The controller's cache of volumes lags behind its own writes (a status written in one pass
//! reaches the cache a moment later), so the status berth last wrote for each volume is kept
//! here too. A pass reads volumes through it, and a status identical to what berth last wrote is
//! not written again: a steady state writes nothing.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use kube::ResourceExt;

use crate::crd::{StatefulLocalVolume, StatefulLocalVolumeStatus};

/// The status berth last wrote, by volume uid and generation.
#[derive(Default)]
pub struct Written(Mutex<HashMap<String, (Option<i64>, StatefulLocalVolumeStatus)>>);

impl Written {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Option<i64>, StatefulLocalVolumeStatus)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What berth last wrote for this generation of the volume.
    pub fn get(&self, obj: &StatefulLocalVolume) -> Option<StatefulLocalVolumeStatus> {
        let uid = obj.uid()?;
        self.lock()
            .get(&uid)
            .filter(|(generation, _)| *generation == obj.metadata.generation)
            .map(|(_, s)| s.clone())
    }

    pub fn put(&self, obj: &StatefulLocalVolume, status: StatefulLocalVolumeStatus) {
        if let Some(uid) = obj.uid() {
            self.lock().insert(uid, (obj.metadata.generation, status));
        }
    }

    pub fn forget(&self, obj: &StatefulLocalVolume) {
        if let Some(uid) = obj.uid() {
            self.lock().remove(&uid);
        }
    }

    /// The volume's status as berth knows it: what it last wrote, else what the object shows.
    pub fn current(&self, obj: &StatefulLocalVolume) -> Option<StatefulLocalVolumeStatus> {
        self.get(obj).or_else(|| obj.status.clone())
    }

    /// The volume as berth knows it: the status it last wrote is newer than the watched copy's.
    /// Once the watch shows what berth wrote, berth's own copy is dropped (it would only double
    /// the memory each volume takes).
    pub fn fresh(&self, obj: &Arc<StatefulLocalVolume>) -> Arc<StatefulLocalVolume> {
        let known = self.current(obj);
        if known.is_some() && known == obj.status {
            self.forget(obj);
        }
        if known != obj.status {
            let mut fresher = (**obj).clone();
            fresher.status = known;
            Arc::new(fresher)
        } else {
            obj.clone()
        }
    }
}
