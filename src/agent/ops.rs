//! The agent's operations: validate an untrusted request with [`crate::tenant`], map ids through
//! the remap, then act through [`SafeRoot`]. Used by the HTTP server and directly by tests.

use std::{
    collections::BTreeMap,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::PathBuf,
    sync::{Arc, atomic::AtomicU64},
    time::Duration,
};

use tracing::{info, info_span, warn};

use super::{
    api::{
        ContainerOwner, DeleteResult, EnsureVolumeRequest, EnsuredVolume, HostInfo, OwnerState, RemapInfo,
        Seed, VolumeQuery, VolumeState, VolumeType, VolumeUsage,
    },
    deletes::{Begin, Deletes},
    quota::{Quota, walks::WalkCache},
    remap::IdMap,
    safe_fs::{EnsureSpec, Meta, SafeRoot, SeedSource},
};
use crate::tenant::{RootTemplate, TenantId, TenantRoot, VolumePath};

mod capacity;
mod error;
mod identity;
mod migrate;
mod outgoing;

pub use capacity::MAX_USAGE_BATCH;
pub use error::OpError;

/// Default largest seed (literal content or copied host file).
pub const DEFAULT_MAX_SEED_BYTES: u64 = 1024 * 1024;
/// Default time a DELETE request waits for its walk before answering `delete_in_progress`.
pub const DEFAULT_DELETE_WAIT: Duration = Duration::from_secs(20);
/// Default age after which a volume's usage measured by walking is walked again when asked for.
pub const DEFAULT_USAGE_WALK_INTERVAL: Duration = Duration::from_secs(600);

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
    /// Create the directory holding the tenant roots when it is missing (else refuse to start:
    /// a typo in the template must not put tenant data on the root filesystem).
    pub create_root: bool,
    /// How long a DELETE request waits for its walk before answering `delete_in_progress`.
    pub delete_wait: Duration,
    /// Turn btrfs quota on at start when it is off (`--enable-quota`), and refuse to start
    /// where limits cannot be enforced.
    pub enable_quota: bool,
    /// Usage measured by walking is walked again at most this often (`--usage-walk-interval`).
    pub usage_walk_interval: Duration,
    /// PEM bundle of the CA(s) other agents' certificates are checked against when this agent
    /// sends them a volume (else the system's roots).
    pub peer_ca_pem: Option<Vec<u8>>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            root_template: crate::tenant::DEFAULT_ROOT_TEMPLATE.to_owned(),
            hostname: String::new(),
            attributes: BTreeMap::new(),
            uid_map: IdMap::identity(),
            gid_map: IdMap::identity(),
            remap_source: "--no-remap".to_owned(),
            seed_allow: Vec::new(),
            max_seed_bytes: DEFAULT_MAX_SEED_BYTES,
            create_root: false,
            delete_wait: DEFAULT_DELETE_WAIT,
            enable_quota: false,
            usage_walk_interval: DEFAULT_USAGE_WALK_INTERVAL,
            peer_ca_pem: None,
        }
    }
}

/// The agent: configuration plus the root fd.
#[derive(Debug)]
pub struct Agent {
    fs: SafeRoot,
    template: RootTemplate,
    config: AgentConfig,
    deletes: Deletes,
    quota: Quota,
    walks: WalkCache,
    /// Transfers to and from other agents, and their staging areas.
    transfers: super::transfer::Transfers,
}

/// What [`Agent::start_delete`] did.
pub enum DeleteStart {
    /// The result of an earlier walk of the path that finished after its request stopped waiting.
    Done(Result<DeleteResult, OpError>),
    /// A walk now running on its own thread.
    Pending(PendingDelete),
}

/// A delete running on its own thread ([`Agent::start_delete`]).
pub struct PendingDelete {
    tenant: TenantId,
    path: VolumePath,
    done: tokio::sync::oneshot::Receiver<()>,
}

impl PendingDelete {
    /// Resolves when the walk has finished (its result is then ready to collect).
    pub async fn finished(&mut self) {
        let _ = (&mut self.done).await;
    }
}

/// A validated tenant and path.
struct Target {
    tenant: TenantId,
    root: TenantRoot,
    path: VolumePath,
}

impl Agent {
    /// Opens the directory holding the tenant roots. It must exist (with
    /// [`AgentConfig::create_root`] it is created, root-owned 0755), be owned by the agent's user
    /// and not be writable by group or others; every `seed_allow` file must exist.
    pub fn new(config: AgentConfig) -> Result<Self, super::AgentError> {
        let cfg = super::AgentError::Config;
        let template =
            RootTemplate::parse(&config.root_template).map_err(|e| cfg(format!("--root-template: {e}")))?;
        let base = template.base();
        if !base.exists() {
            if !config.create_root {
                return Err(cfg(format!(
                    "--root-template {}: the directory {} that holds the tenant roots does not exist; fix the template (a typo would put tenant data on another filesystem), mount the data filesystem there, or pass --create-root to create it",
                    config.root_template,
                    base.display()
                )));
            }
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&base)
                .map_err(|e| cfg(format!("cannot create the agent root {}: {e}", base.display())))?;
            // Whatever the umask (the systemd unit sets 0077).
            std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| cfg(format!("cannot chmod the agent root {}: {e}", base.display())))?;
            info!(root = %base.display(), "created the agent root (--create-root)");
        }
        let fs = SafeRoot::open(&base).map_err(|e| cfg(e.to_string()))?;
        let meta = fs.base_meta().map_err(|e| cfg(e.to_string()))?;
        let euid = rustix::process::geteuid().as_raw();
        if meta.uid != euid || meta.mode & 0o022 != 0 {
            return Err(cfg(format!(
                "the agent root {} is owned by uid {} with mode {:04o}; it must be owned by the agent's user (uid {euid}) and not writable by group or others, or someone else could swap tenant roots: run `chown root {}; chmod go-w {}`",
                base.display(),
                meta.uid,
                meta.perm(),
                base.display(),
                base.display()
            )));
        }
        for p in &config.seed_allow {
            if !p.is_absolute() {
                return Err(cfg(format!("--seed-allow {}: use an absolute path", p.display())));
            }
            match std::fs::metadata(p) {
                Ok(md) if md.is_file() => {}
                Ok(_) => {
                    return Err(cfg(format!(
                        "--seed-allow {}: not a regular file; allow only files such as /etc/localtime",
                        p.display()
                    )));
                }
                Err(e) => {
                    return Err(cfg(format!(
                        "--seed-allow {}: {e}; remove the flag or create the file",
                        p.display()
                    )));
                }
            }
        }
        let quota = Quota::detect(fs.base_fd(), config.enable_quota).map_err(cfg)?;
        let walks = WalkCache::new(config.usage_walk_interval);
        Ok(Self {
            fs,
            template,
            config,
            deletes: Deletes::default(),
            quota,
            walks,
            transfers: Default::default(),
        })
    }

    /// Stops running and future walks (deletes, usage) at their next entry: for shutdown.
    pub fn cancel(&self) {
        self.fs.cancel();
        self.walks.stop();
    }

    /// How many delete walks were started (a DELETE of a path whose walk is running starts none).
    pub fn delete_walks_started(&self) -> u64 {
        self.deletes.walks_started()
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
        migrate::refuse_staging_path(&path)?;
        Ok(Target { tenant, root, path })
    }

    fn map_id(&self, kind: &'static str, map: &IdMap, id: u32) -> Result<u32, OpError> {
        if id == u32::MAX {
            return Err(OpError::InvalidId { kind, id });
        }
        map.to_host(id).ok_or_else(|| {
            // The message a tenant reads does not name the host's files; the log does.
            warn!(kind, id, remap = %self.config.remap_source, "container id outside the remap ranges");
            OpError::IdOutOfRange {
                kind,
                id,
                last: map.mapped_len().unwrap_or(1 << 32) - 1,
            }
        })
    }

    fn map_owner(&self, owner: ContainerOwner) -> Result<(u32, u32), OpError> {
        Ok((
            self.map_id("uid", &self.config.uid_map, owner.uid)?,
            self.map_id("gid", &self.config.gid_map, owner.gid)?,
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
            reowned: None,
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
            quota: self.quota.info(self.fs.base_fd()),
            remap: RemapInfo {
                source: self.config.remap_source.clone(),
                identity: self.config.uid_map.is_identity() && self.config.gid_map.is_identity(),
                uid_ranges: self.config.uid_map.ranges().to_vec(),
                gid_ranges: self.config.gid_map.ranges().to_vec(),
            },
            version: env!("CARGO_PKG_VERSION").to_owned(),
        })
    }

    /// `PUT /v1/volumes` without a capacity: idempotent create-and-converge (a limit berth set
    /// earlier is lifted).
    pub fn ensure(&self, req: &EnsureVolumeRequest) -> Result<VolumeState, OpError> {
        self.ensure_with(req, None).map(|e| e.state)
    }

    /// `PUT /v1/volumes`: idempotent create-and-converge, and the volume's limit made to match
    /// `capacity` where the filesystem can ([`EnsuredVolume::limit`] says how).
    pub fn ensure_with(
        &self,
        req: &EnsureVolumeRequest,
        capacity: Option<u64>,
    ) -> Result<EnsuredVolume, OpError> {
        let t = self.target(&req.tenant, &req.host_path)?;
        Self::check_capacity(capacity)?;
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
                    // The allowlist is the host's business: logged, not told to the tenant.
                    warn!(tenant = %t.tenant, seed = %p, allowed = %allow_list(&self.config.seed_allow),
                          "refused a seed file that is not in --seed-allow");
                    return Err(OpError::SeedNotAllowed { path: p.clone() });
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
        self.deletes.conflict(&t.tenant, &t.path)?;
        let spec = EnsureSpec {
            kind: req.volume_type,
            owner,
            default_owner,
            mode,
            seed,
        };
        let out = self.ensure_fs(&t, &spec, capacity).inspect_err(|e| {
            warn!(error = %e, "ensure refused");
        })?;
        let (limit, limit_changed) = self.converge_limit(&t, req.volume_type, capacity, &out)?;
        let mut state = self.state(&t, &out.meta);
        state.created = out.created;
        state.changed = out.changed || limit_changed;
        state.reowned = out.reowned;
        Ok(EnsuredVolume {
            state,
            limit,
            identity: None,
            adopted: false,
        })
    }

    /// `GET /v1/volumes`: state and usage; [`OpError::NotFound`] when absent.
    pub fn inspect(&self, q: &VolumeQuery) -> Result<VolumeUsage, OpError> {
        let t = self.target(&q.tenant, &q.host_path)?;
        self.deletes.conflict(&t.tenant, &t.path)?;
        let stamp = self.stamp_fields(&t)?;
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
            depth_limited: usage.depth_limited,
            identity: stamp.0,
            released: stamp.1,
        })
    }

    /// `DELETE /v1/volumes`, waiting for the walk to finish: recursive, idempotent. The tenant
    /// root itself cannot be named (a hostPath of `/` is refused by validation). A walk of the
    /// same path already running is not joined: [`OpError::DeleteInProgress`].
    pub fn delete(&self, q: &VolumeQuery) -> Result<DeleteResult, OpError> {
        let t = self.target(&q.tenant, &q.host_path)?;
        let progress = match self.deletes.begin(&t.tenant, &t.path, &self.shown(&t))? {
            Begin::Finished(result) => return result,
            Begin::Started(progress) => progress,
        };
        let result = self.walk_delete(&t, &progress.removed);
        self.deletes
            .finish(&t.tenant, &t.path, progress, result, false)
            .unwrap_or_else(|| Err(OpError::Internal("the delete's result was lost".into())))
    }

    /// Starts `DELETE /v1/volumes` on a thread of its own and returns at once; the request then
    /// waits for [`PendingDelete::finished`] (at most [`AgentConfig::delete_wait`]) and takes
    /// the result with [`Agent::collect_delete`]. A walk outlives a request that stops waiting:
    /// its result is kept for the next DELETE of the path ([`DeleteStart::Done`]).
    pub fn start_delete(self: &Arc<Self>, q: &VolumeQuery) -> Result<DeleteStart, OpError> {
        let t = self.target(&q.tenant, &q.host_path)?;
        let progress = match self.deletes.begin(&t.tenant, &t.path, &self.shown(&t))? {
            Begin::Finished(result) => return Ok(DeleteStart::Done(result)),
            Begin::Started(progress) => progress,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let pending = PendingDelete {
            tenant: t.tenant.clone(),
            path: t.path.clone(),
            done: rx,
        };
        let agent = self.clone();
        let span = tracing::Span::current();
        let spawned = std::thread::Builder::new()
            .name("berth-delete".into())
            .spawn(move || {
                let _g = span.enter();
                let result = agent.walk_delete(&t, &progress.removed);
                agent.deletes.finish(&t.tenant, &t.path, progress, result, true);
                let _ = tx.send(());
            });
        if let Err(e) = spawned {
            self.deletes.abandon(&pending.tenant, &pending.path);
            return Err(OpError::Internal(format!("cannot start a thread: {e}")));
        }
        Ok(DeleteStart::Pending(pending))
    }

    /// The result of a delete started by [`Agent::start_delete`]:
    /// [`OpError::DeleteInProgress`] while its walk runs.
    pub fn collect_delete(&self, pending: &PendingDelete) -> Result<DeleteResult, OpError> {
        match self.deletes.collect(&pending.tenant, &pending.path) {
            Some(r) => r,
            // Another request of the same path collected it first: nothing left to report.
            None => Ok(DeleteResult {
                tenant: pending.tenant.to_string(),
                host_path: pending.path.as_string(),
                existed: false,
                removed_entries: 0,
            }),
        }
    }

    fn shown(&self, t: &Target) -> String {
        t.root
            .host_path(&t.path)
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }

    fn walk_delete(&self, t: &Target, progress: &AtomicU64) -> Result<DeleteResult, OpError> {
        let span = info_span!("delete", tenant = %t.tenant, host_path = %t.path);
        let _g = span.enter();
        let quota = self.quota_object(t);
        let removed = self.fs.delete(&t.root, &t.path, progress).inspect_err(|e| {
            warn!(error = %e, "delete refused or incomplete");
        })?;
        self.release_quota(t, quota);
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

/// Parses `"750"`, `"0750"` or `"01777"`. Setuid and setgid are refused for both types: on a
/// file they are privilege; on a directory setgid is only group inheritance, but the CRD never
/// asks for it and the hardened systemd unit (`RestrictSUIDSGID=yes`) forbids setting it. An
/// existing directory's setgid bit is kept when no permissions are requested.
pub fn parse_mode(s: &str, _kind: VolumeType) -> Result<u32, OpError> {
    let bad = || OpError::BadMode(s.to_owned());
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(bad());
    }
    let mode = u32::from_str_radix(digits, 8).map_err(|_| bad())?;
    if mode > 0o7777 || mode & 0o6000 != 0 {
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
        for bad in [
            "", "0x1ff", "8", "4755", "-1", "077777", "rwx", " 755", "2775", "6755",
        ] {
            assert!(parse_mode(bad, VolumeType::Directory).is_err(), "{bad}");
            assert!(parse_mode(bad, VolumeType::File).is_err(), "{bad}");
        }
    }
}
