//! The `StatefulLocalVolume` custom resource (`berth.dev/v1alpha1`, short name `slv`).
//!
//! The Rust types are the source of truth: `berth crd` prints the CRD generated from them
//! ([`definition`]) and `crds/` holds a copy that a test keeps equal. The schema carries what an
//! apiserver can check (types, lengths, and CEL rules with readable messages on servers that run
//! CEL, see [`rules`]); [`validate`] checks everything again in the controller, with the same
//! words, because older apiservers (such as the 1.20 one the tests use) ignore CEL.

pub mod rules;
pub mod validate;

use k8s_openapi::{
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::Condition},
};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use validate::{SpecError, VolumeRequest};

/// API group of berth's resources.
pub const GROUP: &str = "berth.dev";
/// Finalizer that keeps a volume until its Marathon app is cleaned up.
pub const FINALIZER: &str = "berth.dev/volume";

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
    printcolumn(name = "Moving", type_ = "string", json_path = ".status.migration.progress", description = "Progress of a move to another host"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason", description = "Why the volume is (not) ready", priority = "1"),
    printcolumn(name = "HostPath", type_ = "string", json_path = ".status.hostPath", description = "Absolute path of the data on the host", priority = "1"),
    printcolumn(name = "Capacity", type_ = "string", json_path = ".spec.capacity", description = "Most the volume may hold", priority = "1"),
    printcolumn(name = "Used", type_ = "string", json_path = ".status.usage.used", description = "What the volume holds, as its host last measured it", priority = "1"),
    printcolumn(name = "Limit", type_ = "string", json_path = ".status.usage.limit", description = "Enforced: the host refuses writes past the capacity; Advisory: the capacity only steers placement", priority = "1"),
    validation = Rule::new("!has(self.spec.seed) || (has(self.spec.type) && self.spec.type == 'File')")
        .message("spec.seed is only allowed with spec.type: File")
        .field_path(".spec.seed"),
    validation = Rule::new("!has(oldSelf.status) || !has(oldSelf.status.hostPath) || self.spec.hostPath == oldSelf.spec.hostPath")
        .message("spec.hostPath cannot change once the volume holds data (status.hostPath); create another volume for the new path")
        .field_path(".spec.hostPath"),
)]
#[serde(rename_all = "camelCase")]
pub struct StatefulLocalVolumeSpec {
    /// Marathon app id that mounts this volume, e.g. /toto/web: lower-case letters, digits, '-'
    /// and '.'. It must lie inside the tenant's Marathon group (by default /<namespace>/), and
    /// not be the group itself. Immutable: create a new volume to move data to another app.
    #[schemars(schema_with = "rules::app_id")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.app is immutable"))]
    pub app: String,

    /// Absolute path inside the container where the volume is mounted, e.g. /var/lib/data. The
    /// same rules as hostPath.
    #[schemars(schema_with = "rules::volume_path")]
    pub container_path: String,

    /// Path of the data relative to the tenant's root on the host, written as an absolute path:
    /// /var/log becomes /containerdata/user-<tenant>/var/log. An absolute path of printable ASCII
    /// names: no '..' or '.' components, no ':', ',' or backslash, no name that starts or ends
    /// with a space, at most 32 components. Fixed once the volume holds data (status.hostPath is
    /// set).
    #[schemars(schema_with = "rules::volume_path")]
    pub host_path: String,

    /// What to create on the host: Directory (default) or File. A File volume is created as an
    /// empty (or seeded) regular file, so Docker never turns it into a directory.
    #[serde(default, rename = "type")]
    pub type_: VolumeType,

    /// Mount the volume read-only in the container (Marathon mode RO); default read-write.
    #[serde(default)]
    pub read_only: bool,

    /// Owner of the volume as seen inside the container. berth maps the ids through the host's
    /// user-namespace remap, so a process running as this uid can write its volume. Changing it
    /// re-owns the volume and every entry in it that the previous owner held (not hard-linked
    /// files, not across mount points); the OwnerChanged event says how many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,

    /// Permission bits in octal, as a quoted string: "0750" or "640" (unquoted, YAML reads 0750
    /// as the number 488). Defaults: 0755 for a Directory, 0644 for a File. setuid, setgid and
    /// sticky bits are not allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "rules::permissions")]
    pub permissions: Option<Permissions>,

    /// Initial content of a File volume, written only when the file does not exist yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<Seed>,

    /// Where the data lives. Without it berth chooses a host and then keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,

    /// Most the volume may hold, e.g. 10Gi (at least 1Mi). berth places the volume on a host with
    /// this much free space that has not been promised to other volumes, and where the host's
    /// filesystem can enforce it (btrfs, XFS with project quotas) the kernel refuses writes past
    /// it; elsewhere it is advisory (status.usage.limit says which). Can grow or shrink in place,
    /// but not below what the volume holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Quantity>,

    /// What happens to the data on the host when this resource is deleted: Retain (default)
    /// keeps it, Delete removes it. The same applies to the copy a move to another host leaves
    /// behind: Retain keeps it (marked released), Delete removes it once the app runs on the
    /// new host.
    #[serde(default)]
    pub reclaim_policy: ReclaimPolicy,

    /// What berth does when the host's agent stops answering: wait for it (default), or give
    /// the volume new, empty data elsewhere after a while.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_loss: Option<HostLoss>,

    /// Take over data already at hostPath on the host when the volume is first bound: data from
    /// before berth, or data a deleted volume left (reclaimPolicy: Retain). Without it berth binds
    /// a new volume only to data it creates for it, and says so when something is already there.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopt_data: bool,

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

/// Permission bits as written: a string such as `"0750"`, or the number YAML makes of an unquoted
/// `0750`, which the controller refuses with a hint (the schema accepts both so that the hint
/// reaches the user).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(untagged)]
pub enum Permissions {
    Text(String),
    Number(serde_json::Number),
}

impl From<&str> for Permissions {
    fn from(s: &str) -> Self {
        Permissions::Text(s.to_owned())
    }
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
    #[schemars(schema_with = "rules::volume_path")]
    pub copy_from_host: Option<String>,
}

/// Where the volume lives.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// Host name exactly as Mesos offers it (what Marathon's hostname constraints match), e.g.
    /// node-3 or 10.0.2.148. Every volume of one app must name the same host. Changing it once
    /// the volume holds data moves the data of every volume of the app to the new host: copied
    /// while the app runs, the app stopped for a last copy of what changed, verified, then the
    /// app pinned to the new host and started again (status.migration shows the progress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "rules::host_name")]
    pub host: Option<String>,
    /// Hosts the volume must leave (or never be placed on), e.g. a host being drained: when the
    /// data is on one of them and placement.host names no host, berth moves it to the host
    /// with the most room that the app's constraints allow. `berth drain HOST` adds HOST here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "rules::host_names")]
    pub avoid_hosts: Vec<String>,
}

/// What berth does when the agent of the volume's host stops answering.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostLoss {
    /// Wait (default): keep the volume and its app pinned to the host and report it lost, with
    /// how long; the data comes back with the host. Reprovision: once the host has been away
    /// for `after`, abandon the data and give the volume a new, empty directory or file on
    /// another host (for caches and scratch space). Data found on the old host when it returns
    /// is reported in status.orphaned and never deleted by berth.
    #[serde(default)]
    pub policy: HostLossPolicy,
    /// How long the host must be away before Reprovision acts, e.g. 10m (default 10m, at least
    /// 1m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "rules::duration")]
    pub after: Option<String>,
}

/// What berth does with a volume whose host is lost.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum HostLossPolicy {
    /// Keep the volume pinned to its host and wait for it.
    #[default]
    Wait,
    /// Give the volume new, empty data on another host after `after`.
    Reprovision,
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
    /// The Marathon app berth bound the data to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// The tenant whose root holds the data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// berth's seal over host, hostPath, app and tenant: berth acts on them only when it wrote
    /// them itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<String>,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions in the kstatus convention: Ready is always present; Reconciling and Stalled
    /// appear when they apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// berth marked the data on its host with this volume's identity: from then on it binds the
    /// volume only to data that carries the mark, and reports data that is gone or not the
    /// volume's instead of mounting it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_marked: Option<bool>,
    /// What the volume holds on its host, and how its capacity is held. Updated when it changes
    /// by a step worth showing (1% of the capacity; without one, a tenth or 64Mi), not on every
    /// measurement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<VolumeUsage>,
    /// A move of the volume's data to another host, while it is under way (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationStatus>,
    /// Data of this volume that berth left behind on a host it could not reach (hostLoss:
    /// Reprovision) and found there again: kept, never deleted by berth. Remove it by hand once
    /// it is not needed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub orphaned: Vec<OrphanedData>,
}

/// `status.migration`: where a move stands. berth acts on `from`, `to`, `id`, `step`, `pass`
/// and `instances` only when they carry its seal (`status.seal`).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationStatus {
    /// The host the data leaves.
    pub from: String,
    /// The host the data moves to.
    pub to: String,
    /// The transfer's id on both agents.
    pub id: String,
    /// Copying (while the app runs), Stopping (the app scaled to 0), FinalCopy (what changed
    /// since), Switching (verified and put in place; the app is pinned to the new host and
    /// started, then the copy left on the old host is released or deleted per reclaimPolicy).
    pub step: MigrationStep,
    /// The number of the current copy pass (each attempt has its own).
    pub pass: u32,
    /// The app's instance count before berth stopped it, restored on the new host (or on the
    /// old one when the move is abandoned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<i64>,
    /// When the move started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When berth stopped the app for the last copy (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<String>,
    /// What the copy has done, e.g. "Copying 412Mi of 1Gi, 1200 of 3000 files".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// Bytes of file data the current pass sent, of bytesTotal (shown in tenths).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_done: Option<i64>,
    /// Bytes of file data in the volume when the current pass began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<i64>,
    /// Files the current pass sent, of filesTotal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_done: Option<i64>,
    /// Regular files in the volume when the current pass began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_total: Option<i64>,
    /// The source's manifest digest of the last copy (BLAKE3 over every entry), which the
    /// target's copy must match before it is put in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// Why the move does not progress, when it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A step of a move between hosts.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum MigrationStep {
    #[default]
    Copying,
    Stopping,
    FinalCopy,
    Switching,
}

impl MigrationStep {
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationStep::Copying => "Copying",
            MigrationStep::Stopping => "Stopping",
            MigrationStep::FinalCopy => "FinalCopy",
            MigrationStep::Switching => "Switching",
        }
    }
}

/// Data berth abandoned on a lost host and found there again.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrphanedData {
    /// The host berth lost.
    pub host: String,
    /// Absolute path of the data on that host.
    pub host_path: String,
    /// When berth gave the volume new data elsewhere (RFC 3339).
    pub abandoned_at: String,
    /// True once the host answered again and still holds the data (it is then marked released
    /// there, so that nothing binds it unasked).
    #[serde(default)]
    pub found: bool,
}

/// `status.usage`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeUsage {
    /// How spec.capacity is held: Enforced (the host's kernel refuses writes past it) or
    /// Advisory (it only steers placement; see limitMessage). Absent without spec.capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<LimitMode>,
    /// Why the capacity is not enforced, or not as asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_message: Option<String>,
    /// What the volume holds, e.g. 1.2Gi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<String>,
    /// The same in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<i64>,
    /// Files and directories in the volume, where the host counts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_inodes: Option<i64>,
    /// usedBytes as a percentage of spec.capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_percent: Option<i32>,
    /// When the host measured it (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_at: Option<String>,
}

/// How a volume's capacity is held.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum LimitMode {
    /// The host's kernel refuses writes past the capacity (btrfs qgroup, XFS project quota).
    Enforced,
    /// The capacity only steers placement: the host's filesystem cannot enforce it.
    Advisory,
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

impl StatefulLocalVolumeStatus {
    /// The Ready condition, when the status has one.
    pub fn ready(&self) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == "Ready")
    }

    /// Whether the status says Ready=True.
    pub fn is_ready(&self) -> bool {
        self.ready().is_some_and(|c| c.status == "True")
    }
}

impl Phase {
    /// The phase as written in the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Provisioning => "Provisioning",
            Phase::Bound => "Bound",
            Phase::Migrating => "Migrating",
            Phase::Released => "Released",
            Phase::Failed => "Failed",
        }
    }
}

/// The CRD as berth publishes it: what `StatefulLocalVolume::crd()` derives, without `nullable`
/// (see [`rules::drop_nullable`]). Use this one, not `crd()`.
pub fn definition() -> CustomResourceDefinition {
    let mut crd = StatefulLocalVolume::crd();
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            let mut value = serde_json::to_value(&*schema).expect("a schema serializes to JSON");
            rules::drop_nullable(&mut value);
            *schema = serde_json::from_value(value).expect("the schema without nullable is a schema");
        }
    }
    crd
}

/// The CRD as YAML, exactly as `crds/` holds it.
pub fn crd_yaml() -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string(&definition())
}

#[cfg(test)]
mod tests;
