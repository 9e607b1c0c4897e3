//! Wire types of identity, manifests and transfers between agents (see `docs/agent.md`).

use serde::{Deserialize, Serialize};

use super::{ErrorDetail, VolumeState};
use crate::agent::identity::{Expect, VolumeIdentity};

pub const MANIFEST_PATH: &str = "/v1/volumes/manifest";
pub const RELEASE_PATH: &str = "/v1/volumes/release";
/// Source side: start (`POST`), then `GET`/`DELETE` `/v1/transfers/{id}`.
pub const TRANSFERS_PATH: &str = "/v1/transfers";
/// Target side: the stream (`POST`, ticket), `GET`/`DELETE` `/v1/incoming/{id}`,
/// `POST /v1/incoming/{id}/commit`.
pub const INCOMING_PATH: &str = "/v1/incoming";
/// The authorization scheme of a transfer ticket (`Authorization: Berth-Ticket <ticket>`).
pub const TICKET_SCHEME: &str = "Berth-Ticket";

/// The identity fields of an ensure (both optional: without `identity` nothing is checked).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityCheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<VolumeIdentity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Expect>,
}

/// Query of `DELETE /v1/volumes`: with `identity`, data of another identity (or none) is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeleteQuery {
    pub tenant: String,
    pub host_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<VolumeIdentity>,
}

/// `POST /v1/volumes/release`: the volume was deleted and its data kept (`reclaimPolicy: Retain`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReleaseRequest {
    pub tenant: String,
    pub host_path: String,
    pub identity: VolumeIdentity,
}

/// Result of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseResult {
    pub tenant: String,
    pub host_path: String,
    pub identity: VolumeIdentity,
    /// False when there was no data (nothing to release).
    pub existed: bool,
    /// True when this request marked it (false when it was released already).
    pub changed: bool,
}

/// What a manifest says about a tree: counts and the BLAKE3 digest of its sorted entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestSummary {
    /// Lower-case hex BLAKE3 digest over every entry (see `docs/agent.md#manifests`).
    pub digest: String,
    /// Entries in the digest (the volume itself included).
    pub entries: u64,
    pub directories: u64,
    pub files: u64,
    pub symlinks: u64,
    /// Links of a file beyond its first (each hard-linked file is counted once in `files`).
    pub hard_links: u64,
    /// Sum of the files' sizes (hard-linked files once).
    pub bytes: u64,
    /// Entries left out: FIFOs, sockets, devices and mount points (never copied).
    pub skipped: u64,
    /// The first of them (relative to the volume; non-UTF-8 bytes escaped).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_paths: Vec<String>,
}

/// `GET /v1/volumes/manifest?tenant=&hostPath=`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeManifest {
    pub tenant: String,
    pub host_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<VolumeIdentity>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub released: bool,
    #[serde(flatten)]
    pub manifest: ManifestSummary,
}

/// How the stream is compressed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compression {
    /// zstd where it pays: frames that do not shrink are sent raw, and the next few are not tried.
    #[default]
    Auto,
    Zstd,
    None,
}

/// `POST /v1/transfers` on the source agent: send a volume to another agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TransferRequest {
    /// The controller's id of the migration (`[A-Za-z0-9-]`, at most 64): the same for every pass.
    pub id: String,
    pub tenant: String,
    pub host_path: String,
    /// The volume's identity: the source data must carry it; it is carried over.
    pub identity: VolumeIdentity,
    /// The pass number, increasing for every attempt (the ticket is bound to it).
    pub pass: u32,
    /// Send everything even when this agent could send only what changed since the last pass.
    #[serde(default)]
    pub full: bool,
    #[serde(default)]
    pub compression: Compression,
    pub target: TransferTarget,
}

/// Where to send: the target agent's URL and a ticket the controller minted with its token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TransferTarget {
    pub url: String,
    pub ticket: String,
}

impl std::fmt::Debug for TransferTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransferTarget")
            .field("url", &self.url)
            .field("ticket", &"<redacted>")
            .finish()
    }
}

/// Everything or only what changed since the last pass the target acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PassMode {
    Full,
    Delta,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

/// `GET /v1/transfers/{id}` on the source agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransferStatus {
    pub id: String,
    pub tenant: String,
    pub host_path: String,
    pub pass: u32,
    pub mode: PassMode,
    pub state: TransferState,
    /// Regular files and their bytes to send (from a walk before sending; a live tree may change).
    pub files_total: u64,
    pub bytes_total: u64,
    pub files_done: u64,
    pub bytes_done: u64,
    /// Entries sent (directories, files, links) and deletions sent.
    pub entries_sent: u64,
    pub deleted: u64,
    /// Bytes of records before compression and on the wire.
    pub raw_bytes: u64,
    pub wire_bytes: u64,
    /// Files whose setuid/setgid bits were not copied.
    pub setid_stripped: u64,
    pub elapsed_ms: u64,
    /// The source's manifest of the volume after this pass (when it succeeded): the target's
    /// commit compares its copy against `manifest.digest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<ManifestSummary>,
    /// What the target said (when it answered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received: Option<ReceiveResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

/// The target's answer to a stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReceiveResult {
    pub transfer_id: String,
    pub pass: u32,
    pub mode: Option<PassMode>,
    pub entries: u64,
    pub data_bytes: u64,
    pub deleted: u64,
    /// Owners the target could not map (given to the agent's user): the manifests then differ.
    pub unmapped_owners: u64,
    pub setid_stripped: u64,
}

/// Query of `GET`/`DELETE /v1/incoming/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IncomingQuery {
    pub tenant: String,
}

/// `GET /v1/incoming/{id}` on the target agent: its staging area of a transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IncomingStatus {
    pub id: String,
    pub tenant: String,
    /// A staging area exists.
    pub exists: bool,
    /// A stream is being received now.
    pub receiving: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<VolumeIdentity>,
    /// The last pass received completely.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_complete_pass: Option<u32>,
    /// Progress of the stream being received.
    pub entries: u64,
    pub data_bytes: u64,
}

/// `POST /v1/incoming/{id}/commit`: verify the staged copy and put it in place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommitRequest {
    pub tenant: String,
    pub host_path: String,
    pub identity: VolumeIdentity,
    /// The source's manifest digest ([`TransferStatus::manifest`] or `GET /v1/volumes/manifest`).
    pub manifest: String,
}

/// Result of a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommitResult {
    #[serde(flatten)]
    pub state: VolumeState,
    pub identity: VolumeIdentity,
    /// The target's manifest of the data now in place (equal to the source's).
    pub manifest: ManifestSummary,
    /// True when an earlier commit had already put it in place (a retry).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub already_committed: bool,
}

/// Refusals and failures of transfers also use [`ErrorDetail`].
pub type TransferError = ErrorDetail;
