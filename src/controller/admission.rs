//! The controller's own admission of a volume (pure): the spec rules (`crd::validate`), and rules
//! no schema can check because they span volumes or time.
//!
//! - **No volume inside another volume of the tenant.** A container with write access to an
//!   ancestor of another mount's source could swap a directory for a symlink before the next
//!   mount and make Docker bind whatever the link points at (host-safety reference, §1.3), and a
//!   volume's directory belongs to its containers. Two volumes may share one path only when both
//!   are read-only. Every volume of the tenant counts, whatever its age, until its finalizer is
//!   gone (a volume being deleted is still mounted until berth removed it from its app). When
//!   two volumes conflict, the one already admitted in its current form keeps working and the
//!   edit or the newcomer is refused — the change that would widen access, never the older
//!   volume.
//! - **What is bound stays bound.** Once berth bound a volume's data, its app, its `hostPath`
//!   and its `type` cannot change: a new app or path would mount an empty path where the data
//!   was. (The CRD's CEL rules say the same on servers that run CEL.)

use std::sync::Arc;

use kube::ResourceExt;

use crate::{
    crd::{
        StatefulLocalVolume,
        validate::{TenantPolicy, VolumeRequest, validate},
    },
    tenant::{NamespaceMapping, TenantId, VolumePath},
};

/// A volume as the overlap rule sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// `namespace/name`, for messages.
    pub name: String,
    pub host_path: VolumePath,
    pub read_only: bool,
}

/// Why `me` and `other` may not both exist, if they conflict.
///
/// A volume's directory belongs to its containers (its owner is the container user), so no
/// other volume may lie inside it: the inner volume's parent would be writable by a container,
/// which could swap a path component for a symlink before the next mount and redirect it (and
/// the agent refuses such a parent). Two volumes at the same path share their data: only
/// read-only in both.
pub fn nested_conflict(me: &Claim, other: &Claim) -> Option<String> {
    if me.host_path == other.host_path {
        return (!me.read_only || !other.read_only).then(|| {
            format!(
                "spec.hostPath: {} is also the host path of volume {}; two volumes may share a path only \
                 when both are readOnly. Use another path, or make both volumes readOnly",
                me.host_path, other.name
            )
        });
    }
    if other.host_path.contains(&me.host_path) {
        Some(format!(
            "spec.hostPath: {} lies inside {}, the host path of volume {}; a volume's directory belongs to \
             its containers, which could replace a directory with a symlink and redirect this mount. Use \
             a path outside it",
            me.host_path, other.host_path, other.name
        ))
    } else if me.host_path.contains(&other.host_path) {
        Some(format!(
            "spec.hostPath: {} contains {}, the host path of volume {}; this volume's containers could \
             replace a directory with a symlink and redirect that mount. Use a path outside it",
            me.host_path, other.host_path, other.name
        ))
    } else {
        None
    }
}

/// Whether berth admitted the volume in its current form (its latest generation): such a volume
/// wins a conflict against an edit or a newcomer.
pub fn admitted_as_is(v: &StatefulLocalVolume) -> bool {
    v.status.as_ref().is_some_and(|s| {
        s.observed_generation.is_some()
            && s.observed_generation == v.metadata.generation
            && s.ready().is_some_and(|c| c.reason != "InvalidSpec")
    })
}

/// Which of two conflicting volumes must give way: true when `me` does.
fn me_gives_way(me: &StatefulLocalVolume, other: &StatefulLocalVolume) -> bool {
    match (admitted_as_is(me), admitted_as_is(other)) {
        (true, false) => false,
        (false, true) => true,
        // Both new (or both admitted under older rules): the later one gives way.
        _ => {
            let order = |v: &StatefulLocalVolume| (v.creation_timestamp(), v.namespace(), v.name_any());
            order(me) > order(other)
        }
    }
}

/// Why `req` may not be used for a volume whose data is at `bound` (its recorded host path).
///
/// `bound` is the path the host's agent reported: the tenant root as that agent sees it, then
/// the user's path. The controller's root template may put the same tenant root under another
/// prefix (each simulated host of a test has its own), so the comparison starts at the tenant's
/// own directory.
pub fn host_path_moved(bound: &str, req: &VolumePath, tenant_dir: &str) -> Option<String> {
    let tail = format!("/{tenant_dir}{}", req.as_string());
    if bound.ends_with(&tail) {
        return None;
    }
    Some(format!(
        "spec.hostPath cannot change once the volume holds data: its data is at {bound}, and {} would mount a \
         new, empty path in its place. Put spec.hostPath back, or create another volume for the new path",
        req.as_string()
    ))
}

/// What admission needs to know besides the volume itself.
pub struct Admission<'a> {
    pub tenants: &'a NamespaceMapping,
    pub policy: &'a TenantPolicy,
    /// Volumes whose host path shares the first component with this one's, from every
    /// namespace, those being deleted included.
    pub neighbours: &'a [Arc<StatefulLocalVolume>],
}

/// What berth bound the volume to before, from its sealed record.
#[derive(Clone, Copy)]
pub struct Bound<'a> {
    pub app: &'a str,
    pub tenant: &'a TenantId,
    /// Where the data is, once recorded.
    pub host_path: Option<&'a str>,
}

impl Admission<'_> {
    /// Validates `obj` for its namespace's tenant, against what berth bound it to, and against
    /// the tenant's other volumes.
    pub fn admit(
        &self,
        obj: &StatefulLocalVolume,
        bound: Option<&Bound<'_>>,
    ) -> Result<VolumeRequest, String> {
        let ns = obj.namespace().unwrap_or_default();
        let tenant = self.tenants.tenant(&ns)?;
        let req = validate(&obj.spec, &tenant, self.policy).map_err(|e| e.to_string())?;
        if let Some(b) = bound {
            if b.app != req.app.as_str() {
                return Err(format!(
                    "spec.app cannot change once the volume holds data: its data is mounted in {}, and {} would \
                     leave that app without it. Put spec.app back to {}, or create another volume for {}",
                    b.app, req.app, b.app, req.app
                ));
            }
            if b.tenant != &tenant {
                return Err(format!(
                    "namespace {ns} now belongs to tenant {tenant}, but the volume's data is in tenant {}'s root; \
                     berth keeps it as it is until the mapping is restored or the volume is deleted",
                    b.tenant
                ));
            }
            if let Some(path) = b.host_path {
                let root = self.policy.roots.root(&tenant);
                if let Some(msg) = host_path_moved(path, &req.host_path, root.dir_name()) {
                    return Err(msg);
                }
            }
        }
        let me = Claim {
            name: format!("{ns}/{}", obj.name_any()),
            host_path: req.host_path.clone(),
            read_only: req.read_only,
        };
        for other in self.neighbours {
            if other.uid() == obj.uid() {
                continue;
            }
            let Some(other_ns) = other.namespace() else {
                continue;
            };
            let same_tenant = other_ns == ns || self.tenants.tenant(&other_ns).is_ok_and(|t| t == tenant);
            let Ok(path) = VolumePath::parse(&other.spec.host_path) else {
                continue;
            };
            if !same_tenant {
                continue;
            }
            let claim = Claim {
                name: format!("{other_ns}/{}", other.name_any()),
                host_path: path,
                read_only: other.spec.read_only,
            };
            if let Some(msg) = nested_conflict(&me, &claim)
                && me_gives_way(obj, other)
            {
                return Err(msg);
            }
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests;
