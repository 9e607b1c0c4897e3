//! The `StatefulLocalVolume` custom resource (`berth.dev/v1alpha1`, short name `slv`).
//!
//! The Rust types are the source of truth: `berth crd` prints the CRD generated from them and
//! `crds/` holds a copy that a test keeps equal. The schema carries what an apiserver can check
//! (types, patterns, lengths, CEL rules on servers that run CEL); [`validate`] checks everything
//! again in the controller, because older apiservers (such as the 1.20 one the tests use) ignore
//! CEL.

pub mod validate;

use k8s_openapi::apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::Condition};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use validate::{SpecError, VolumeRequest};

/// API group of berth's resources.
pub const GROUP: &str = "berth.dev";
/// Finalizer that keeps a volume until its Marathon app is cleaned up.
pub const FINALIZER: &str = "berth.dev/volume";

/// An absolute path with plain components of printable ASCII other than `/ : , \`, none of them
/// `.` or `..` (RE2 has no look-ahead, hence the spelled-out alternatives).
const PATH_PATTERN: &str = r"^(/+([ -+\-0-9;-\[\]-~][ -+\--.0-9;-\[\]-~]*|\.[ -+\-0-9;-\[\]-~][ -+\--.0-9;-\[\]-~]*|\.\.[ -+\--.0-9;-\[\]-~]+))+/*$";

/// A local volume for a Marathon app: a directory or file beneath the tenant's root on one host,
/// mounted into the app's Docker container, with the app pinned to that host.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "berth.dev",
    version = "v1alpha1",
    kind = "StatefulLocalVolume",
    namespaced,
    status = "StatefulLocalVolumeStatus",
    shortname = "slv",
    category = "berth",
    doc = "A StatefulLocalVolume gives a Marathon app a directory or file on one host's local disk, chrooted under the tenant's root, and keeps the app pinned to that host.",
    printcolumn(name = "App", type_ = "string", json_path = ".spec.app", description = "Marathon app id"),
    printcolumn(name = "Host", type_ = "string", json_path = ".status.host", description = "Host that holds the data"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason", description = "Why the volume is (not) ready", priority = "1"),
    printcolumn(name = "HostPath", type_ = "string", json_path = ".status.hostPath", description = "Absolute path of the data on the host", priority = "1"),
    validation = Rule::new("!has(self.spec.seed) || (has(self.spec.type) && self.spec.type == 'File')")
        .message("spec.seed is only allowed with spec.type: File")
        .field_path(".spec.seed"),
    validation = Rule::new("!has(oldSelf.status) || !has(oldSelf.status.hostPath) || self.spec.hostPath == oldSelf.spec.hostPath")
        .message("spec.hostPath cannot change once the volume holds data (status.hostPath); create another volume for the new path")
        .field_path(".spec.hostPath"),
)]
#[serde(rename_all = "camelCase")]
pub struct StatefulLocalVolumeSpec {
    /// Marathon app id that mounts this volume, e.g. /toto/web. It must lie inside the tenant's
    /// Marathon group (by default /<namespace>/). Immutable: create a new volume to move data to
    /// another app.
    #[schemars(
        length(min = 2, max = 512),
        regex(pattern = r"^(/[a-z0-9]([a-z0-9.-]*[a-z0-9])?)+$")
    )]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.app is immutable"))]
    pub app: String,

    /// Absolute path inside the container where the volume is mounted, e.g. /var/lib/data.
    #[schemars(length(min = 2, max = 4095), regex(pattern = PATH_PATTERN))]
    pub container_path: String,

    /// Path of the data relative to the tenant's root on the host, written as an absolute path:
    /// /var/log becomes /containerdata/user-<tenant>/var/log. No '..', '.', ':' or ','. Fixed once
    /// the volume holds data (status.hostPath is set).
    #[schemars(length(min = 2, max = 4095), regex(pattern = PATH_PATTERN))]
    pub host_path: String,

    /// What to create on the host: Directory (default) or File. A File volume is created as an
    /// empty (or seeded) regular file, so Docker never turns it into a directory.
    #[serde(default, rename = "type")]
    pub type_: VolumeType,

    /// Mount the volume read-only in the container (Marathon mode RO); default read-write.
    #[serde(default)]
    pub read_only: bool,

    /// Owner of the volume as seen inside the container. berth maps the ids through the host's
    /// user-namespace remap, so a process running as this uid can write its volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,

    /// Permission bits in octal, e.g. "0750" or "640". Defaults: 0755 for a Directory, 0644 for a
    /// File. setuid, setgid and sticky bits are not allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^0?[0-7]{3}$"))]
    pub permissions: Option<String>,

    /// Initial content of a File volume, written only when the file does not exist yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<Seed>,

    /// Where the data lives. Without it berth chooses a host and then keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,

    /// Expected size, e.g. 10Gi: berth places the volume on a host with at least this much free
    /// space.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Quantity>,

    /// What happens to the data on the host when this resource is deleted: Retain (default)
    /// keeps it, Delete removes it.
    #[serde(default)]
    pub reclaim_policy: ReclaimPolicy,

    /// Allow the old and the new task of the app to run at the same time during a restart. By
    /// default berth makes restarts single-writer (old tasks stop before new ones start), so two
    /// versions of the app never write this data at once. Set it only for data that tolerates
    /// concurrent writers.
    #[serde(default)]
    pub allow_concurrent_writers: bool,
}

/// What kind of object the volume is on the host.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum VolumeType {
    /// A directory (created with its missing parents).
    #[default]
    Directory,
    /// A regular file (created empty or from `seed`; its parents are directories).
    File,
}

/// Owner ids as seen inside the container.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, KubeSchema)]
pub struct Owner {
    /// User id of the container process, e.g. 1000.
    #[schemars(range(min = 0, max = 4294967294_u32))]
    pub uid: u32,
    /// Group id of the container process, e.g. 1000.
    #[schemars(range(min = 0, max = 4294967294_u32))]
    pub gid: u32,
}

/// Initial content of a File volume. Exactly one of `content` and `copyFromHost`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.content) != has(self.copyFromHost)")
    .message("set exactly one of seed.content and seed.copyFromHost"))]
pub struct Seed {
    /// Literal content of the file (at most 1 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1048576))]
    pub content: Option<String>,
    /// Absolute path of a host file to copy, e.g. /etc/localtime. The agent only copies files on
    /// its allowlist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 4095), regex(pattern = PATH_PATTERN))]
    pub copy_from_host: Option<String>,
}

/// Where the volume lives.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
pub struct Placement {
    /// Host name exactly as Mesos offers it (what Marathon's hostname constraints match), e.g.
    /// node-3 or 10.0.2.148. Every volume of one app must name the same host.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
    )]
    pub host: String,
}

/// What happens to host data when the resource is deleted.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ReclaimPolicy {
    /// Keep the data on the host.
    #[default]
    Retain,
    /// Delete the data from the host.
    Delete,
}

/// Observed state, written by the controller only.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatefulLocalVolumeStatus {
    /// Where the volume is in its life: Pending, Provisioning, Bound, Migrating, Released or
    /// Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Host that holds the data. Recorded before anything is created, and kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Absolute path of the data on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions in the kstatus convention: Ready is always present; Reconciling and Stalled
    /// appear when they apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// Life-cycle phase of a volume.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Accepted, not yet placed or provisioned.
    Pending,
    /// Placed; the host's agent is creating the volume or Marathon is being updated.
    Provisioning,
    /// Created on its host, mounted into the app and the app pinned there.
    Bound,
    /// Moving to another host.
    Migrating,
    /// Removed from its app; the data is kept on the host.
    Released,
    /// Cannot make progress without a change by the user; see the Ready condition.
    Failed,
}

/// The CRD as YAML, exactly as `crds/` holds it.
pub fn crd_yaml() -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string(&StatefulLocalVolume::crd())
}

#[cfg(test)]
mod tests;
