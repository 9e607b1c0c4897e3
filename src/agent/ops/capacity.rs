//! The agent's side of capacities: creating a volume so it can be limited, converging its limit,
//! cleaning quota objects up on delete, and `POST /v1/usage`.

use std::{
    os::fd::BorrowedFd,
    sync::Arc,
    time::{Instant, SystemTime},
};

use tracing::{debug, warn};

use super::{Agent, OpError, Target};
use crate::agent::{
    api::{
        ErrorDetail, LimitState, QuotaKind, UsageReport, UsageRequest, UsageResponse, UsageSource,
        VolumeQuery, VolumeType,
    },
    quota::{Limits, MIN_CAPACITY, MeasureCache, QuotaObject, walks::Walked},
    safe_fs::{EnsureOutcome, EnsureSpec, FsError, NewDir},
};

/// Most volumes one `POST /v1/usage` may name.
pub const MAX_USAGE_BATCH: usize = 10_000;

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl Agent {
    /// Refuses a capacity too small to hold anything.
    pub(super) fn check_capacity(capacity: Option<u64>) -> Result<(), OpError> {
        match capacity {
            Some(c) if c < MIN_CAPACITY => Err(OpError::BadCapacity { bytes: c }),
            _ => Ok(()),
        }
    }

    /// Creates or converges the volume; a missing directory volume with a capacity is made so
    /// that it can be limited (a btrfs subvolume, or an XFS project-tagged directory).
    pub(super) fn ensure_fs(
        &self,
        t: &Target,
        spec: &EnsureSpec,
        capacity: Option<u64>,
    ) -> Result<EnsureOutcome, OpError> {
        let base = self.fs.base_fd();
        let (tenant, path) = (t.tenant.to_string(), t.path.as_string());
        let tag = |fd: BorrowedFd<'_>| self.quota.tag_new_dir(base, fd, &tenant, &path);
        let new_dir = if self.quota.wants_subvolume(spec.kind, capacity) {
            NewDir::Subvolume
        } else if self.quota.wants_project(spec.kind, capacity) {
            NewDir::Prepared(&tag)
        } else {
            NewDir::Plain
        };
        Ok(self.fs.ensure_as(&t.root, &t.path, spec, new_dir)?)
    }

    /// Makes the volume's limit match `capacity` (lifting one berth set when it is `None`).
    /// Returns the limit's state when a capacity was asked for, and whether anything changed.
    pub(super) fn converge_limit(
        &self,
        t: &Target,
        kind: VolumeType,
        capacity: Option<u64>,
        out: &EnsureOutcome,
    ) -> Result<(Option<LimitState>, bool), OpError> {
        if capacity.is_none() && self.quota.kind() == QuotaKind::None {
            return Ok((None, false));
        }
        let vol = match kind {
            VolumeType::Directory => self.fs.open_volume_dir(&t.root, &t.path)?,
            VolumeType::File => None,
        };
        if let Some(v) = &vol
            && (v.meta.dev, v.meta.ino) != (out.meta.dev, out.meta.ino)
        {
            return Err(FsError::Raced {
                path: v.shown.clone(),
            }
            .into());
        }
        let (tenant, host_path) = (t.tenant.to_string(), t.path.as_string());
        let limits = Limits {
            tenant: &tenant,
            host_path: &host_path,
            kind,
            capacity,
            created: out.created,
        };
        Ok(self.quota.converge(self.fs.base_fd(), vol.as_ref(), &limits))
    }

    /// The quota object of a volume about to be deleted (released once it is gone).
    pub(super) fn quota_object(&self, t: &Target) -> Option<QuotaObject> {
        if self.quota.kind() == QuotaKind::None {
            return None;
        }
        let vol = self.fs.open_volume_dir(&t.root, &t.path).ok().flatten()?;
        self.quota
            .object_of(&vol, &t.tenant.to_string(), &t.path.as_string())
    }

    /// After a complete delete: the volume's quota object and cached usage go too.
    pub(super) fn release_quota(&self, t: &Target, obj: Option<QuotaObject>) {
        let (tenant, path) = (t.tenant.to_string(), t.path.as_string());
        if let Some(obj) = obj {
            self.quota.release(self.fs.base_fd(), obj, &tenant, &path);
        }
        self.walks.forget(&(tenant, path));
    }

    /// `POST /v1/usage`: the usage of each volume named, from quota accounting where the
    /// volume has it, else from the last walk (queued when missing or older than the interval).
    /// Never walks in the request.
    pub fn usage(self: &Arc<Self>, req: &UsageRequest) -> Result<UsageResponse, OpError> {
        if req.volumes.len() > MAX_USAGE_BATCH {
            return Err(OpError::BatchTooLarge {
                len: req.volumes.len(),
                max: MAX_USAGE_BATCH,
            });
        }
        if self.quota.kind() == QuotaKind::BtrfsQgroup {
            self.quota.sweep_stale_qgroups(self.fs.base_fd());
        }
        let mut cache = MeasureCache::default();
        let mut start_walker = false;
        let volumes = req
            .volumes
            .iter()
            .map(|q| {
                let mut r = UsageReport {
                    tenant: q.tenant.clone(),
                    host_path: q.host_path.clone(),
                    ..UsageReport::default()
                };
                if let Err(e) = self.usage_one(q, &mut cache, &mut start_walker, &mut r) {
                    r.error = Some(ErrorDetail {
                        code: e.code().to_owned(),
                        message: e.to_string(),
                    });
                }
                r
            })
            .collect();
        if start_walker {
            self.start_walker();
        }
        Ok(UsageResponse { volumes })
    }

    fn usage_one(
        &self,
        q: &VolumeQuery,
        cache: &mut MeasureCache,
        start_walker: &mut bool,
        r: &mut UsageReport,
    ) -> Result<(), OpError> {
        let t = self.target(&q.tenant, &q.host_path)?;
        self.deletes.conflict(&t.tenant, &t.path)?;
        let (tenant, path) = (t.tenant.to_string(), t.path.as_string());
        let Some(vol) = self.fs.open_volume_dir(&t.root, &t.path)? else {
            // A file (or whatever a tenant left there): its own size, never followed.
            let meta = self
                .fs
                .stat(&t.root, &t.path)?
                .ok_or_else(|| OpError::NotFound(self.shown(&t)))?;
            r.used_bytes = Some(meta.blocks.saturating_mul(512));
            r.used_inodes = Some(1);
            r.source = Some(UsageSource::Walk);
            r.measured_at = Some(rfc3339(SystemTime::now()));
            return Ok(());
        };
        if let Some(u) = self.quota.measure(self.fs.base_fd(), &vol, &tenant, &path, cache) {
            r.used_bytes = Some(u.bytes);
            r.used_inodes = u.inodes;
            r.limit_bytes = u.limit;
            r.nested_subvolumes = u.nested;
            r.source = Some(UsageSource::Quota);
            r.measured_at = Some(rfc3339(SystemTime::now()));
            return Ok(());
        }
        let (walked, start) = self.walks.get(&(tenant, path));
        *start_walker |= start;
        r.source = Some(UsageSource::Walk);
        if let Some(w) = walked {
            r.used_bytes = Some(w.bytes);
            r.used_inodes = Some(w.inodes);
            r.partial = w.partial;
            r.measured_at = Some(rfc3339(w.at));
        }
        Ok(())
    }

    /// Starts the walker thread; it ends when the queue is empty.
    fn start_walker(self: &Arc<Self>) {
        let agent = self.clone();
        let spawned = std::thread::Builder::new()
            .name("berth-usage".into())
            .spawn(move || {
                while let Some(key) = agent.walks.next() {
                    let started = Instant::now();
                    let walked = agent.walk_usage(&key);
                    agent.walks.store(&key, walked);
                    agent.walks.rest(started.elapsed());
                }
            });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start the usage walker; usage by walk waits for the next request");
            self.walks.walker_failed();
        }
    }

    /// One walk of a volume's tree (`None` when it is gone, being deleted or cannot be walked).
    fn walk_usage(&self, key: &(String, String)) -> Option<Walked> {
        let t = self.target(&key.0, &key.1).ok()?;
        self.deletes.conflict(&t.tenant, &t.path).ok()?;
        match self.fs.usage(&t.root, &t.path) {
            Ok(Some((_, u))) => Some(Walked {
                bytes: u.bytes,
                inodes: u.entries,
                partial: u.depth_limited || !u.skipped_mounts.is_empty(),
                at: SystemTime::now(),
            }),
            Ok(None) => None,
            Err(e) => {
                debug!(tenant = %key.0, host_path = %key.1, error = %e, "usage walk failed");
                None
            }
        }
    }
}
