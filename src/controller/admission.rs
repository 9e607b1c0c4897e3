//! The controller's own admission of a volume: the spec rules (`crd::validate`), and a rule no
//! schema can check because it spans volumes: within a tenant, no read-write volume may contain
//! another volume's host path. A container with write access to an ancestor of another mount's
//! source could swap a directory for a symlink before the next mount and make Docker bind
//! whatever the link points at (host-safety reference, §1.3). And a rule only the status knows:
//! once a volume holds data, its `hostPath` is where that data is and cannot change.

use kube::ResourceExt;

use super::context::Context;
use crate::{
    crd::{StatefulLocalVolume, validate::VolumeRequest, validate::validate},
    tenant::VolumePath,
};

/// A volume as the overlap rule sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// `namespace/name`, for messages.
    pub name: String,
    pub host_path: VolumePath,
    pub read_only: bool,
}

/// Why `me` may not use its host path, given the tenant's volumes that came before it.
pub fn nested_conflict(me: &Claim, earlier: &[Claim]) -> Option<String> {
    earlier.iter().find_map(|other| {
        if other.host_path.contains(&me.host_path) && !other.read_only {
            Some(format!(
                "spec.hostPath: {} lies inside {}, the host path of volume {}, which is mounted read-write; \
                 its container could replace a directory with a symlink and redirect this mount. Use a path \
                 outside it",
                me.host_path, other.host_path, other.name
            ))
        } else if me.host_path.contains(&other.host_path) && !me.read_only {
            Some(format!(
                "spec.hostPath: {} contains {}, the host path of volume {}; mounted read-write, this volume's \
                 container could replace a directory with a symlink and redirect that mount. Use a path outside \
                 it, or make this volume readOnly",
                me.host_path, other.host_path, other.name
            ))
        } else {
            None
        }
    })
}

/// Why `req` may not be used for a volume whose data is at `bound` (its `status.hostPath`).
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

/// Validates `obj` for its namespace's tenant and checks it against the tenant's volumes that
/// were created before it (the older volume keeps working, the newer one is refused), and
/// against where its data already is. `obj` carries the status berth knows
/// ([`status::fresh`](super::status::fresh)).
pub fn admit(ctx: &Context, obj: &StatefulLocalVolume) -> Result<VolumeRequest, String> {
    let ns = obj.namespace().unwrap_or_default();
    let tenant = ctx.tenants.tenant(&ns)?;
    let req = validate(&obj.spec, &tenant, &ctx.policy).map_err(|e| e.to_string())?;
    if let Some(bound) = obj.status.as_ref().and_then(|s| s.host_path.as_deref()) {
        let tenant_root = ctx.policy.roots.root(&tenant);
        if let Some(msg) = host_path_moved(bound, &req.host_path, tenant_root.dir_name()) {
            return Err(msg);
        }
    }
    let order = |v: &StatefulLocalVolume| (v.creation_timestamp(), v.namespace(), v.name_any());
    let mine = order(obj);
    // Paths can only nest when their first components are equal: the cache's index hands over
    // just those volumes.
    let earlier: Vec<Claim> = ctx
        .volumes
        .sharing_first_component(&req.host_path.as_string())
        .iter()
        .filter(|v| v.uid() != obj.uid() && v.metadata.deletion_timestamp.is_none() && order(v) < mine)
        .filter(|v| {
            v.namespace()
                .is_some_and(|n| n == ns || ctx.tenants.tenant(&n).is_ok_and(|t| t == tenant))
        })
        .filter_map(|v| {
            Some(Claim {
                name: format!("{}/{}", v.namespace()?, v.name_any()),
                host_path: VolumePath::parse(&v.spec.host_path).ok()?,
                read_only: v.spec.read_only,
            })
        })
        .collect();
    let me = Claim {
        name: format!("{ns}/{}", obj.name_any()),
        host_path: req.host_path.clone(),
        read_only: req.read_only,
    };
    match nested_conflict(&me, &earlier) {
        Some(msg) => Err(msg),
        None => Ok(req),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(name: &str, path: &str, read_only: bool) -> Claim {
        Claim {
            name: name.into(),
            host_path: VolumePath::parse(path).unwrap(),
            read_only,
        }
    }

    #[test]
    fn a_path_inside_a_read_write_volume_is_refused() {
        let msg =
            nested_conflict(&claim("t/b", "/data/sub", false), &[claim("t/a", "/data", false)]).unwrap();
        assert!(msg.contains("/data/sub lies inside /data"), "{msg}");
        assert!(msg.contains("t/a"));
    }

    #[test]
    fn a_read_write_volume_around_another_is_refused_unless_read_only() {
        assert!(
            nested_conflict(&claim("t/b", "/data", false), &[claim("t/a", "/data/sub", false)]).is_some()
        );
        assert_eq!(
            nested_conflict(&claim("t/b", "/data", true), &[claim("t/a", "/data/sub", false)]),
            None
        );
    }

    #[test]
    fn read_only_parents_and_siblings_are_fine() {
        assert_eq!(
            nested_conflict(&claim("t/b", "/etc/sub", false), &[claim("t/a", "/etc", true)]),
            None
        );
        assert_eq!(
            nested_conflict(&claim("t/b", "/database", false), &[claim("t/a", "/data", false)]),
            None
        );
        assert_eq!(
            nested_conflict(&claim("t/b", "/b", false), &[claim("t/a", "/a", false)]),
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

    #[test]
    fn the_same_path_twice_is_refused_when_either_is_read_write() {
        assert!(nested_conflict(&claim("t/b", "/data", true), &[claim("t/a", "/data", false)]).is_some());
        assert!(nested_conflict(&claim("t/b", "/data", false), &[claim("t/a", "/data", true)]).is_some());
        assert_eq!(
            nested_conflict(&claim("t/b", "/data", true), &[claim("t/a", "/data", true)]),
            None
        );
    }
}
