//! What the agent answers when it refuses or fails: messages a tenant may read (they end up in
//! volume status and events), so they name only the tenant's own paths, and say what to do.

use thiserror::Error;

use crate::{
    agent::{identity::IdentityError, safe_fs::FsError, transfer::TransferError},
    tenant::PathError,
};

/// A refused or failed operation. Messages are shown to users as-is and say what to do.
#[derive(Debug, Error)]
pub enum OpError {
    #[error("tenant {0}")]
    BadTenant(PathError),
    #[error("hostPath {path:?} {source}; use a plain absolute path such as /var/log")]
    BadPath { path: String, source: PathError },
    #[error(
        "permissions {0:?} is not valid: use octal digits such as \"0750\" (at most 01777; setuid and setgid are never allowed)"
    )]
    BadMode(String),
    #[error(
        "container {kind} {id} is outside this host's user-namespace remap, which maps container {kind}s 0 to {last}; use a smaller {kind}, or ask the host's administrator to widen the remap ranges"
    )]
    IdOutOfRange { kind: &'static str, id: u32, last: u64 },
    #[error("container {kind} {id} cannot be used as an owner; use a real id")]
    InvalidId { kind: &'static str, id: u32 },
    #[error("seed is only allowed for volumes of type File; remove it or change the type to File")]
    SeedOnDirectory,
    #[error(
        "seed file {path:?} is not allowed on this host; use seed.content, or ask the host's administrator to allow the file"
    )]
    SeedNotAllowed { path: String },
    #[error("seed content is {len} bytes, more than the agent's limit of {max}; use a smaller file")]
    SeedTooLarge { len: usize, max: u64 },
    #[error("{0} does not exist")]
    NotFound(String),
    #[error(
        "{path} is being deleted ({removed} entries removed so far, in {seconds} s); berth neither starts a second delete of it nor touches it meanwhile. Retry later: the next DELETE returns the result once the delete is done"
    )]
    DeleteInProgress {
        path: String,
        removed: u64,
        seconds: u64,
    },
    #[error(
        "capacityBytes {bytes} is too small: a volume's capacity must be at least 1 MiB (1048576 bytes); ask for more, or none"
    )]
    BadCapacity { bytes: u64 },
    #[error("{len} volumes were asked for in one request, more than {max}; split the request")]
    BatchTooLarge { len: usize, max: usize },
    #[error("the operation could not be started ({0}); retry, and report it if it persists")]
    Internal(String),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("{0}")]
    Request(String),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Transfer(#[from] TransferError),
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
            OpError::BadCapacity { .. } => "invalid_capacity",
            OpError::BatchTooLarge { .. } => "invalid_request",
            OpError::DeleteInProgress { .. } => "delete_in_progress",
            OpError::Internal(_) => "internal",
            OpError::Request(_) => "invalid_request",
            OpError::Identity(e) => e.code(),
            OpError::Transfer(e) => e.code(),
            OpError::Fs(e) => match e {
                FsError::Symlink { .. } => "symlink",
                FsError::MountPoint { .. } => "mount_point",
                FsError::TypeMismatch { .. } => "type_mismatch",
                FsError::ParentNotDirectory { .. } => "parent_not_directory",
                FsError::HardLinked { .. } => "hard_linked",
                FsError::Raced { .. } => "concurrent_change",
                FsError::DeleteIncomplete { .. } => "delete_incomplete",
                FsError::UnsafeParent { .. } => "unsafe_parent",
                FsError::Interrupted { .. } => "shutting_down",
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
            | OpError::SeedTooLarge { .. }
            | OpError::BadCapacity { .. }
            | OpError::BatchTooLarge { .. } => 400,
            OpError::SeedNotAllowed { .. } => 403,
            OpError::NotFound(_) => 404,
            OpError::IdOutOfRange { .. } | OpError::InvalidId { .. } => 422,
            OpError::DeleteInProgress { .. } => 409,
            OpError::Internal(_) => 500,
            OpError::Request(_) => 400,
            OpError::Identity(_) => 409,
            OpError::Transfer(e) => e.status(),
            OpError::Fs(FsError::Io { .. } | FsError::SeedSource { .. }) => 500,
            OpError::Fs(FsError::Interrupted { .. }) => 503,
            OpError::Fs(_) => 409,
        }
    }
}
