//! Wire types of the agent's HTTP API, shared by the agent and the controller's client.
//! All JSON field names are camelCase. See `docs/agent.md` for examples.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use super::remap::IdRange;

mod migration;
pub use migration::*;

/// Route prefix of the versioned API.
pub const HEALTH_PATH: &str = "/healthz";
pub const HOST_PATH: &str = "/v1/host";
pub const VOLUMES_PATH: &str = "/v1/volumes";
/// Ensure many volumes in one request (a host's volumes, verified together).
pub const VOLUMES_BATCH_PATH: &str = "/v1/volumes/batch";
/// Most volumes in one batch.
pub const MAX_BATCH: usize = 512;
pub const USAGE_PATH: &str = "/v1/usage";

/// The type a volume is declared as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum VolumeType {
    #[default]
    Directory,
    File,
}

/// What actually exists at a path (a tenant may leave anything there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryType {
    Directory,
    File,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
    Unknown,
}

impl EntryType {
    /// A phrase for messages: "a directory", "a symbolic link", ...
    pub fn describe(self) -> &'static str {
        match self {
            EntryType::Directory => "a directory",
            EntryType::File => "a regular file",
            EntryType::Symlink => "a symbolic link",
            EntryType::Fifo => "a FIFO (named pipe)",
            EntryType::Socket => "a socket",
            EntryType::CharDevice => "a character device",
            EntryType::BlockDevice => "a block device",
            EntryType::Unknown => "an object of unknown type",
        }
    }
}

impl From<VolumeType> for EntryType {
    fn from(t: VolumeType) -> Self {
        match t {
            VolumeType::Directory => EntryType::Directory,
            VolumeType::File => EntryType::File,
        }
    }
}

/// Owner as container ids (what the app runs as).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerOwner {
    pub uid: u32,
    pub gid: u32,
}

/// Contents for a file that does not exist yet. Never applied to an existing file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Seed {
    /// Literal UTF-8 contents.
    Content(String),
    /// Copy a host file that the agent's `--seed-allow` list names, e.g. `/etc/localtime`.
    CopyFromHost(String),
}

/// `PUT /v1/volumes`: make sure a volume exists with this type, owner and mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnsureVolumeRequest {
    /// Tenant name (a DNS label); selects the root, e.g. `/containerdata/user-<tenant>`.
    pub tenant: String,
    /// Absolute path below the tenant root, e.g. `/var/log`.
    pub host_path: String,
    #[serde(default, rename = "type")]
    pub volume_type: VolumeType,
    /// Container ids of the owner; mapped through the host's remap. Default on creation: the
    /// container's root (0:0); an existing volume keeps its owner when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<ContainerOwner>,
    /// Octal permission bits such as `"0750"`. Default on creation: `0755` for directories,
    /// `0644` for files; an existing volume keeps its mode when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<String>,
    /// Contents of a new file (type `File` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<Seed>,
}

/// Owner of an object on the host, and the container ids it shows as (absent when the host id is
/// outside the remap range: the container then sees the overflow id, usually 65534).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerState {
    pub host_uid: u32,
    pub host_gid: u32,
    #[serde(default)]
    pub container_uid: Option<u32>,
    #[serde(default)]
    pub container_gid: Option<u32>,
}

/// The actual state of a volume after ensure, or on inspect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeState {
    pub tenant: String,
    /// The user's path, e.g. `/var/log`.
    pub host_path: String,
    /// The absolute host path to give Docker, e.g. `/containerdata/user-toto/var/log`.
    pub absolute_path: String,
    #[serde(rename = "type")]
    pub entry_type: EntryType,
    pub owner: OwnerState,
    /// Permission bits in octal, e.g. `"0750"`.
    pub mode: String,
    /// `st_size` of the object itself.
    pub size_bytes: u64,
    /// True when this request created the volume (false when it already existed).
    #[serde(default)]
    pub created: bool,
    /// True when this request changed anything (created it, or fixed owner or mode).
    #[serde(default)]
    pub changed: bool,
    /// When the owner of a directory volume changed: what was re-owned below it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reowned: Option<ReownReport>,
}

/// What a change of a directory volume's owner did below it: entries the previous owner owned
/// are given to the new one; hard-linked files and mounts are left alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReownReport {
    /// Entries whose owner changed.
    pub entries: u64,
    /// Regular files with several hard links, left as they were.
    pub skipped_hard_links: u64,
    /// Mount points not descended into.
    pub skipped_mounts: u64,
    /// Directories nested deeper than the agent walks were not re-owned.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub depth_limited: bool,
}

/// `GET /v1/volumes?tenant=..&hostPath=..`: state plus disk usage of the whole tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeUsage {
    #[serde(flatten)]
    pub state: VolumeState,
    /// Allocated bytes (`st_blocks × 512`) of the object and everything below it on the same
    /// filesystem; hard-linked files are counted once.
    pub usage_bytes: u64,
    /// Number of objects counted (the volume itself included).
    pub entries: u64,
    /// Paths (relative to the volume) of mount points that were not descended into.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_mounts: Vec<String>,
    /// True when directories nested deeper than the agent walks (256 levels) were not counted:
    /// `usageBytes` and `entries` are then lower bounds.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub depth_limited: bool,
    /// The identity the data carries (`trusted.berth.volume`), when it carries one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<super::identity::VolumeIdentity>,
    /// True when that volume was deleted and left its data (`reclaimPolicy: Retain`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub released: bool,
}

/// Query of `GET` and `DELETE /v1/volumes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeQuery {
    pub tenant: String,
    pub host_path: String,
}

/// Result of `DELETE /v1/volumes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteResult {
    pub tenant: String,
    pub host_path: String,
    /// False when nothing was there (deleting is idempotent).
    pub existed: bool,
    /// Objects removed (the volume itself included).
    pub removed_entries: u64,
}

/// Free and total space of the filesystem holding the tenant roots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FsSpace {
    /// Bytes available to unprivileged writers (`f_bavail × f_frsize`).
    pub free_bytes: u64,
    /// Size of the filesystem (`f_blocks × f_frsize`).
    pub total_bytes: u64,
    /// Inodes available to unprivileged writers (`f_favail`); absent on filesystems that
    /// allocate inodes as needed (btrfs reports none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_inodes: Option<u64>,
    /// Inodes of the filesystem (`f_files`); absent where inodes are allocated as needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_inodes: Option<u64>,
}

/// The remap the agent applies (empty ranges = identity, no remap).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemapInfo {
    /// Where the ranges came from, e.g. `"/etc/subuid and /etc/subgid for user dockremap"`.
    pub source: String,
    pub identity: bool,
    pub uid_ranges: Vec<IdRange>,
    pub gid_ranges: Vec<IdRange>,
}

/// `GET /v1/host`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostInfo {
    /// Hostname as Marathon/Mesos sees this host (what `hostname` constraints match).
    pub hostname: String,
    /// The host's Mesos attributes (from the agent's --attributes), as Marathon's constraints
    /// compare them: what berth's placement checks an app's attribute constraints against.
    /// Empty when not configured (and from agents older than this field).
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Directory holding all tenant roots, e.g. `/containerdata`.
    pub root: String,
    /// Template of a tenant root, e.g. `/containerdata/user-{tenant}`.
    pub root_template: String,
    #[serde(flatten)]
    pub space: FsSpace,
    pub remap: RemapInfo,
    /// Which limits the data root's filesystem can enforce (from agents older than this field:
    /// kind `none`).
    #[serde(default)]
    pub quota: QuotaInfo,
    pub version: String,
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// A machine-readable code and a message that says what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

/// `PUT /v1/volumes/batch`: ensure each volume, as `PUT /v1/volumes` would, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnsureBatch {
    pub volumes: Vec<EnsureBody>,
}

/// The answer to one volume of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BatchResult {
    Ok(Box<EnsuredVolume>),
    /// What `PUT /v1/volumes` would have answered, with its HTTP status.
    Error {
        status: u16,
        error: ErrorDetail,
    },
}

/// The answers of a batch, in the order of its volumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnsureBatchResult {
    pub results: Vec<BatchResult>,
}
mod capacity;

pub use capacity::*;
