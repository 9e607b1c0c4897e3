//! Ensure, inspect, release and delete with the data's identity ([`crate::agent::identity`]).

use std::sync::{Arc, Mutex};

use tracing::{info, warn};

use super::{Agent, DeleteStart, OpError, Target};
use crate::agent::{
    api::{DeleteQuery, EnsureBody, EnsuredVolume, ReleaseRequest, ReleaseResult, VolumeQuery},
    identity::{self, Action, Stamp, StampState, VolumeIdentity},
};

/// Marks are read, decided on and written under one of these locks (by path), so two requests
/// for the same path cannot both decide on what they read before the other wrote.
static MARK_LOCKS: [Mutex<()>; 16] = [const { Mutex::new(()) }; 16];

pub(super) fn mark_lock(t: &Target) -> std::sync::MutexGuard<'static, ()> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    t.tenant.as_str().hash(&mut h);
    t.path.components().hash(&mut h);
    let i = (h.finish() % MARK_LOCKS.len() as u64) as usize;
    MARK_LOCKS[i].lock().unwrap_or_else(|p| p.into_inner())
}

impl Agent {
    /// `PUT /v1/volumes` with the identity fields: without `identity`, exactly [`Agent::ensure`];
    /// with it, the data found is checked against it first ([`identity::decide`]) and the data
    /// created or adopted is marked.
    pub fn ensure_checked(&self, body: &EnsureBody) -> Result<EnsuredVolume, OpError> {
        let (req, check, capacity) = (&body.request, &body.check, body.capacity_bytes);
        let Some(id) = &check.identity else {
            if check.expect.is_some() {
                return Err(OpError::Request(
                    "expect needs identity: send the volume's uid as identity".into(),
                ));
            }
            return self.ensure_with(req, capacity);
        };
        let expect = check.expect.unwrap_or_default();
        let t = self.target(&req.tenant, &req.host_path)?;
        self.deletes.conflict(&t.tenant, &t.path)?;
        let _lock = mark_lock(&t);
        let (found, shown) = self.fs.read_stamp(&t.root, &t.path)?;
        let action = identity::decide(&found, id, expect, &shown).inspect_err(|e| {
            warn!(tenant = %t.tenant, host_path = %t.path, identity = %id, expect = ?expect, error = %e,
                  "ensure refused: the data is not this volume's");
        })?;
        let ensured = self.ensure_with(req, capacity)?;
        let state = &ensured.state;
        let adopted = action == Action::Mark && !state.created;
        if action == Action::Mark {
            // What was looked at must still be what is marked: a volume created meanwhile by
            // another request (or by Docker) is looked at again.
            let (now, _) = self.fs.read_stamp(&t.root, &t.path)?;
            let expected = if state.created {
                &Stamp::Unstamped { empty: true }
            } else {
                &found
            };
            if !same_stamp(&now, expected) {
                identity::decide(&now, id, expect, &shown)?;
            }
            self.fs
                .write_stamp(&t.root, &t.path, &identity::encode(StampState::Bound, id))?;
            if adopted {
                info!(tenant = %t.tenant, host_path = %t.path, identity = %id, found = ?found,
                      "adopted existing data as the volume's");
            }
        }
        Ok(EnsuredVolume {
            identity: Some(id.clone()),
            adopted,
            ..ensured
        })
    }

    /// `POST /v1/volumes/release`: marks the volume's data as released, so that a new volume of
    /// the tenant may adopt it deliberately (`Expect::AdoptReleased`).
    pub fn release(&self, req: &ReleaseRequest) -> Result<ReleaseResult, OpError> {
        let t = self.target(&req.tenant, &req.host_path)?;
        self.deletes.conflict(&t.tenant, &t.path)?;
        let _lock = mark_lock(&t);
        let (found, shown) = self.fs.read_stamp(&t.root, &t.path)?;
        let result = |existed, changed| ReleaseResult {
            tenant: t.tenant.to_string(),
            host_path: t.path.as_string(),
            identity: req.identity.clone(),
            existed,
            changed,
        };
        match found {
            Stamp::Absent => Ok(result(false, false)),
            Stamp::Marked {
                state: StampState::Released,
                identity,
            } if identity == req.identity => Ok(result(true, false)),
            Stamp::Marked { identity, .. } if identity == req.identity => {
                self.fs.write_stamp(
                    &t.root,
                    &t.path,
                    &identity::encode(StampState::Released, &req.identity),
                )?;
                Ok(result(true, true))
            }
            other => {
                identity::check_delete(&other, &req.identity, &shown)?;
                Err(OpError::Internal("unexpected identity state".into()))
            }
        }
    }

    /// The identity of the data at a validated path, for inspect.
    pub(super) fn stamp_fields(&self, t: &Target) -> Result<(Option<VolumeIdentity>, bool), OpError> {
        Ok(match self.fs.read_stamp(&t.root, &t.path)?.0 {
            Stamp::Marked { state, identity } => (Some(identity), state == StampState::Released),
            _ => (None, false),
        })
    }

    /// `DELETE /v1/volumes` with an optional identity: data marked with another identity, or
    /// not marked, is refused before anything is removed.
    pub fn start_delete_checked(self: &Arc<Self>, q: &DeleteQuery) -> Result<DeleteStart, OpError> {
        let vq = VolumeQuery {
            tenant: q.tenant.clone(),
            host_path: q.host_path.clone(),
        };
        if let Some(id) = &q.identity {
            let t = self.target(&q.tenant, &q.host_path)?;
            self.deletes.conflict(&t.tenant, &t.path)?;
            let (found, shown) = self.fs.read_stamp(&t.root, &t.path)?;
            identity::check_delete(&found, id, &shown).inspect_err(|e| {
                warn!(tenant = %t.tenant, host_path = %t.path, identity = %id, error = %e,
                      "delete refused: the data is not this volume's");
            })?;
        }
        self.start_delete(&vq)
    }
}

fn same_stamp(a: &Stamp, b: &Stamp) -> bool {
    match (a, b) {
        // An empty volume created by this request may have been written to meanwhile.
        (Stamp::Unstamped { .. }, Stamp::Unstamped { .. }) => true,
        _ => a == b,
    }
}
