//! The agent's operations: validate an untrusted request with [`crate::tenant`], map ids through
//! the remap, then act through [`SafeRoot`]. Used by the HTTP server and directly by tests.

use std::{collections::BTreeMap, path::PathBuf};

use thiserror::Error;
use tracing::{info_span, warn};

use super::{
    api::{
        ContainerOwner, DeleteResult, EnsureVolumeRequest, HostInfo, OwnerState, RemapInfo, Seed,
        VolumeQuery, VolumeState, VolumeType, VolumeUsage,
    },
    remap::IdMap,
    safe_fs::{EnsureSpec, FsError, Meta, SafeRoot, SeedSource},
};
use crate::tenant::{PathError, RootTemplate, TenantId, TenantRoot, VolumePath};

/// Default largest seed (literal content or copied host file).
pub const DEFAULT_MAX_SEED_BYTES: u64 = 1024 * 1024;

/// Everything the agent needs to act (the HTTP side — token, TLS, listen address — is separate).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Tenant root template, e.g. `/containerdata/user-{tenant}`.
    pub root_template: String,
    /// Hostname as Marathon/Mesos sees this host.
    pub hostname: String,
    /// The host's Mesos attributes, as Marathon's constraints compare them.
    pub attributes: BTreeMap<String, String>,
    pub uid_map: IdMap,
    pub gid_map: IdMap,
    /// Where the maps came from (shown in host info).
    pub remap_source: String,
    /// Host files that `seed.copyFromHost` may name (exact absolute paths).
    pub seed_allow: Vec<PathBuf>,
    pub max_seed_bytes: u64,
}

/// A refused or failed operation. Messages are shown to users as-is and say what to do.
#[derive(Debug, Error)]
pub enum OpError {
    #[error("tenant {0}")]
    BadTenant(PathError),
    #[error("hostPath {path:?} {source}; use a plain absolute path such as /var/log")]
    BadPath { path: String, source: PathError },
    #[error(
        "permissions {0:?} is not valid: use octal digits such as \"0750\" (at most 01777; setuid is never allowed, setgid only on directories)"
    )]
    BadMode(String),
    #[error(
        "container {kind} {id} is outside this host's user-namespace remap, which maps container {kind}s 0 to {last}; use a smaller {kind} or widen the remap ranges ({source_name})"
    )]
    IdOutOfRange {
        kind: &'static str,
        id: u32,
        last: u64,
        source_name: String,
    },
    #[error("container {kind} {id} cannot be used as an owner; use a real id")]
    InvalidId { kind: &'static str, id: u32 },
    #[error("seed is only allowed for volumes of type File; remove it or change the type to File")]
    SeedOnDirectory,
    #[error(
        "seed file {path:?} is not in this agent's --seed-allow list ({allowed}); use seed.content, or ask the host's administrator to allow the file"
    )]
    SeedNotAllowed { path: String, allowed: String },
    #[error("seed content is {len} bytes, more than the agent's limit of {max}; use a smaller file")]
    SeedTooLarge { len: usize, max: u64 },
    #[error("{0} does not exist")]
    NotFound(String),
    #[error(transparent)]
    Fs(#[from] FsError),
}

impl OpError {
    /// Machine-readable code of the error (the `error.code` of a response).
    pub fn code(&self) -> &'static str {
        match self {
            OpError::BadTenant(_) => "invalid_tenant",
            OpError::BadPath { .. } => "invalid_path",
            OpError::BadMode(_) => "invalid_permissions",
            OpError::IdOutOfRange { .. } | OpError::InvalidId { .. } => "id_out_of_range",
            OpError::SeedOnDirectory | OpError::SeedTooLarge { .. } => "invalid_seed",
            OpError::SeedNotAllowed { .. } => "seed_not_allowed",
            OpError::NotFound(_) => "not_found",
            OpError::Fs(e) => match e {
                FsError::Symlink { .. } => "symlink",
                FsError::MountPoint { .. } => "mount_point",
                FsError::TypeMismatch { .. } => "type_mismatch",
                FsError::ParentNotDirectory { .. } => "parent_not_directory",
                FsError::HardLinked { .. } => "hard_linked",
                FsError::Raced { .. } => "concurrent_change",
                FsError::DeleteIncomplete { .. } => "delete_incomplete",
                FsError::TooDeep { .. } => "too_deep",
                FsError::SeedSource { .. } => "seed_source",
                FsError::Io { .. } => "io",
            },
        }
    }

    /// HTTP status of the error: 4xx when the request or the tenant's data must change, 5xx
    /// when the host itself failed.
    pub fn status(&self) -> u16 {
        match self {
            OpError::BadTenant(_)
            | OpError::BadPath { .. }
            | OpError::BadMode(_)
            | OpError::SeedOnDirectory
            | OpError::SeedTooLarge { .. } => 400,
            OpError::SeedNotAllowed { .. } => 403,
            OpError::NotFound(_) => 404,
            OpError::IdOutOfRange { .. } | OpError::InvalidId { .. } => 422,
            OpError::Fs(FsError::Io { .. } | FsError::SeedSource { .. }) => 500,
            OpError::Fs(_) => 409,
        }
    }
}

/// The agent: configuration plus the root fd.
#[derive(Debug)]
pub struct Agent {
    fs: SafeRoot,
    template: RootTemplate,
    config: AgentConfig,
}

/// A validated tenant and path.
struct Target {
    tenant: TenantId,
    root: TenantRoot,
    path: VolumePath,
}

impl Agent {
    /// Opens the root directory (creating it, root-owned 0755, when missing).
    pub fn new(config: AgentConfig) -> Result<Self, super::AgentError> {
        let template = RootTemplate::parse(&config.root_template)
            .map_err(|e| super::AgentError::Config(format!("--root-template: {e}")))?;
        let base = template.base();
        if !base.exists() {
            std::fs::create_dir_all(&base).map_err(|e| {
                super::AgentError::Config(format!("cannot create the agent root {}: {e}", base.display()))
            })?;
            tracing::info!(root = %base.display(), "created the agent root");
        }
        let fs = SafeRoot::open(&base).map_err(|e| super::AgentError::Config(e.to_string()))?;
        Ok(Self { fs, template, config })
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    fn target(&self, tenant: &str, host_path: &str) -> Result<Target, OpError> {
        let tenant = TenantId::parse(tenant).map_err(OpError::BadTenant)?;
        let path = VolumePath::parse(host_path).map_err(|source| OpError::BadPath {
            path: host_path.to_owned(),
            source,
        })?;
        let root = self.template.root(&tenant);
        root.host_path(&path).map_err(|source| OpError::BadPath {
            path: host_path.to_owned(),
            source,
        })?;
        Ok(Target { tenant, root, path })
    }

    fn map_id(&self, kind: &'static str, map: &IdMap, id: u32, src: &str) -> Result<u32, OpError> {
        if id == u32::MAX {
            return Err(OpError::InvalidId { kind, id });
        }
        map.to_host(id).ok_or_else(|| OpError::IdOutOfRange {
            kind,
            id,
            last: map.mapped_len().unwrap_or(1 << 32) - 1,
            source_name: src.to_owned(),
        })
    }

    fn map_owner(&self, owner: ContainerOwner) -> Result<(u32, u32), OpError> {
        let src = &self.config.remap_source;
        Ok((
            self.map_id("uid", &self.config.uid_map, owner.uid, src)?,
            self.map_id("gid", &self.config.gid_map, owner.gid, src)?,
        ))
    }

    fn state(&self, t: &Target, meta: &Meta) -> VolumeState {
        VolumeState {
            tenant: t.tenant.to_string(),
            host_path: t.path.as_string(),
            absolute_path: t
                .root
                .host_path(&t.path)
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            entry_type: meta.entry_type(),
            owner: OwnerState {
                host_uid: meta.uid,
                host_gid: meta.gid,
                container_uid: self.config.uid_map.to_container(meta.uid),
                container_gid: self.config.gid_map.to_container(meta.gid),
            },
            mode: format!("{:04o}", meta.perm()),
            size_bytes: meta.size,
            created: false,
            changed: false,
        }
    }

    /// `GET /v1/host`.
    pub fn host_info(&self) -> Result<HostInfo, OpError> {
        Ok(HostInfo {
            hostname: self.config.hostname.clone(),
            attributes: self.config.attributes.clone(),
            root: self.fs.base_path().display().to_string(),
            root_template: self.config.root_template.clone(),
            space: self.fs.space()?,
            remap: RemapInfo {
                source: self.config.remap_source.clone(),
                identity: self.config.uid_map.is_identity() && self.config.gid_map.is_identity(),
                uid_ranges: self.config.uid_map.ranges().to_vec(),
                gid_ranges: self.config.gid_map.ranges().to_vec(),
            },
            version: env!("CARGO_PKG_VERSION").to_owned(),
        })
    }

    /// `PUT /v1/volumes`: idempotent create-and-converge.
    pub fn ensure(&self, req: &EnsureVolumeRequest) -> Result<VolumeState, OpError> {
        let t = self.target(&req.tenant, &req.host_path)?;
        let mode = req
            .permissions
            .as_deref()
            .map(|m| parse_mode(m, req.volume_type))
            .transpose()?;
        let owner = req.owner.map(|o| self.map_owner(o)).transpose()?;
        let default_owner = self.map_owner(ContainerOwner { uid: 0, gid: 0 })?;
        let seed = match (&req.seed, req.volume_type) {
            (None, _) => None,
            (Some(_), VolumeType::Directory) => return Err(OpError::SeedOnDirectory),
            (Some(Seed::Content(c)), VolumeType::File) => {
                if c.len() as u64 > self.config.max_seed_bytes {
                    return Err(OpError::SeedTooLarge {
                        len: c.len(),
                        max: self.config.max_seed_bytes,
                    });
                }
                Some(SeedSource::Bytes(c.clone().into_bytes()))
            }
            (Some(Seed::CopyFromHost(p)), VolumeType::File) => {
                let path = PathBuf::from(p);
                if !self.config.seed_allow.contains(&path) {
                    return Err(OpError::SeedNotAllowed {
                        path: p.clone(),
                        allowed: allow_list(&self.config.seed_allow),
                    });
                }
                Some(SeedSource::HostFile {
                    path,
                    max_bytes: self.config.max_seed_bytes,
                })
            }
        };
        let span = info_span!("ensure", tenant = %t.tenant, host_path = %t.path,
            kind = ?req.volume_type, owner = ?req.owner, host_owner = ?owner,
            permissions = ?req.permissions);
        let _g = span.enter();
        let spec = EnsureSpec {
            kind: req.volume_type,
            owner,
            default_owner,
            mode,
            seed,
        };
        let out = self.fs.ensure(&t.root, &t.path, &spec).inspect_err(|e| {
            warn!(error = %e, "ensure refused");
        })?;
        let mut state = self.state(&t, &out.meta);
        state.created = out.created;
        state.changed = out.changed;
        Ok(state)
    }

    /// `GET /v1/volumes`: state and usage; [`OpError::NotFound`] when absent.
    pub fn inspect(&self, q: &VolumeQuery) -> Result<VolumeUsage, OpError> {
        let t = self.target(&q.tenant, &q.host_path)?;
        let Some((meta, usage)) = self.fs.usage(&t.root, &t.path)? else {
            return Err(OpError::NotFound(
                t.root
                    .host_path(&t.path)
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            ));
        };
        Ok(VolumeUsage {
            state: self.state(&t, &meta),
            usage_bytes: usage.bytes,
            entries: usage.entries,
            skipped_mounts: usage.skipped_mounts,
        })
    }

    /// `DELETE /v1/volumes`: recursive, idempotent. The tenant root itself cannot be named
    /// (a hostPath of `/` is refused by validation).
    pub fn delete(&self, q: &VolumeQuery) -> Result<DeleteResult, OpError> {
        let t = self.target(&q.tenant, &q.host_path)?;
        let span = info_span!("delete", tenant = %t.tenant, host_path = %t.path);
        let _g = span.enter();
        let removed = self.fs.delete(&t.root, &t.path).inspect_err(|e| {
            warn!(error = %e, "delete refused or incomplete");
        })?;
        Ok(DeleteResult {
            tenant: t.tenant.to_string(),
            host_path: t.path.as_string(),
            existed: removed.is_some(),
            removed_entries: removed.unwrap_or(0),
        })
    }
}

fn allow_list(list: &[PathBuf]) -> String {
    if list.is_empty() {
        "the list is empty".to_owned()
    } else {
        list.iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Parses `"750"`, `"0750"` or `"01777"`. Setuid is refused; setgid only on directories.
pub fn parse_mode(s: &str, kind: VolumeType) -> Result<u32, OpError> {
    let bad = || OpError::BadMode(s.to_owned());
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(bad());
    }
    let mode = u32::from_str_radix(digits, 8).map_err(|_| bad())?;
    if mode > 0o7777 || mode & 0o4000 != 0 {
        return Err(bad());
    }
    if mode & 0o2000 != 0 && kind == VolumeType::File {
        return Err(bad());
    }
    Ok(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0750", VolumeType::Directory).unwrap(), 0o750);
        assert_eq!(parse_mode("640", VolumeType::File).unwrap(), 0o640);
        assert_eq!(parse_mode("01777", VolumeType::Directory).unwrap(), 0o1777);
        assert_eq!(parse_mode("2775", VolumeType::Directory).unwrap(), 0o2775);
        for bad in ["", "0x1ff", "8", "4755", "-1", "077777", "rwx", " 755"] {
            assert!(parse_mode(bad, VolumeType::Directory).is_err(), "{bad}");
        }
        assert!(parse_mode("2755", VolumeType::File).is_err());
    }
}
