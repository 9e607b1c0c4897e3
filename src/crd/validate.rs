//! The controller's own check of a volume spec: everything the CRD schema says, and what a schema
//! cannot say (tenant roots, app groups, path lengths after chrooting). Pure, so every rule has a
//! unit test; the result is a [`VolumeRequest`] whose fields are already validated types.

use std::{fmt, path::PathBuf};

use super::{HostLossPolicy, Owner, Permissions, ReclaimPolicy, StatefulLocalVolumeSpec, VolumeType};
use crate::tenant::{AppGroupRule, MarathonAppId, PathError, RootTemplate, TenantId, VolumePath};

/// How tenants map to host roots and Marathon groups (the controller's configuration).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantPolicy {
    pub roots: RootTemplate,
    pub apps: AppGroupRule,
}

/// A spec field that was refused, and why. Shown to users in the `Ready` condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// JSON path of the offending field, e.g. `spec.hostPath`.
    pub field: &'static str,
    pub message: String,
}

impl SpecError {
    fn new(field: &'static str, message: impl fmt::Display) -> Self {
        Self {
            field,
            message: message.to_string(),
        }
    }

    fn path(field: &'static str, e: PathError) -> Self {
        Self::new(field, e)
    }
}

/// Where a File volume's first content comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeedSource {
    Content(String),
    /// An absolute host path; the agent copies it only if its allowlist names it.
    CopyFromHost(String),
}

/// A validated volume: what the controller places, provisions and mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRequest {
    pub tenant: TenantId,
    pub app: MarathonAppId,
    pub container_path: VolumePath,
    /// The user's path, relative to the tenant root.
    pub host_path: VolumePath,
    /// The absolute path on the host, under the tenant root.
    pub host_path_abs: PathBuf,
    pub kind: VolumeType,
    pub read_only: bool,
    pub owner: Option<Owner>,
    /// Permission bits, at most 0o777.
    pub mode: u32,
    pub seed: Option<SeedSource>,
    /// The host the user asked for, if any.
    pub host: Option<String>,
    /// Hosts the volume must leave or avoid (`placement.avoidHosts`).
    pub avoid_hosts: Vec<String>,
    /// What to do when the host is lost, and after how long (`hostLoss`).
    pub host_loss: HostLossPolicy,
    pub host_loss_after: std::time::Duration,
    pub capacity_bytes: Option<u64>,
    pub reclaim: ReclaimPolicy,
    pub allow_concurrent_writers: bool,
}

/// How long a host must be away before `hostLoss: Reprovision` acts, by default and at least.
pub const DEFAULT_HOST_LOSS_AFTER: std::time::Duration = std::time::Duration::from_secs(600);
pub const MIN_HOST_LOSS_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// Largest literal seed, as in the schema.
const MAX_SEED_BYTES: usize = 1 << 20;

/// Checks a spec for a tenant. The first problem found is returned.
pub fn validate(
    spec: &StatefulLocalVolumeSpec,
    tenant: &TenantId,
    policy: &TenantPolicy,
) -> Result<VolumeRequest, SpecError> {
    let app = policy
        .apps
        .check(tenant, &spec.app)
        .map_err(|e| SpecError::path("spec.app", e))?;
    let container_path =
        VolumePath::parse(&spec.container_path).map_err(|e| SpecError::path("spec.containerPath", e))?;
    let host_path = VolumePath::parse(&spec.host_path).map_err(|e| SpecError::path("spec.hostPath", e))?;
    let host_path_abs = policy
        .roots
        .root(tenant)
        .host_path(&host_path)
        .map_err(|e| SpecError::path("spec.hostPath", e))?;
    let mode = match &spec.permissions {
        Some(Permissions::Text(p)) => parse_mode(p).map_err(|m| SpecError::new("spec.permissions", m))?,
        Some(Permissions::Number(n)) => return Err(SpecError::new("spec.permissions", unquoted_mode(n))),
        None if spec.type_ == VolumeType::File => 0o644,
        None => 0o755,
    };
    let seed = match &spec.seed {
        None => None,
        Some(_) if spec.type_ != VolumeType::File => {
            return Err(SpecError::new("spec.seed", "is only allowed with type: File"));
        }
        Some(seed) => Some(match (&seed.content, &seed.copy_from_host) {
            (Some(content), None) if content.len() > MAX_SEED_BYTES => {
                return Err(SpecError::new("spec.seed.content", "is larger than 1 MiB"));
            }
            (Some(content), None) => SeedSource::Content(content.clone()),
            (None, Some(from)) => {
                let from =
                    VolumePath::parse(from).map_err(|e| SpecError::path("spec.seed.copyFromHost", e))?;
                SeedSource::CopyFromHost(from.as_string())
            }
            _ => {
                return Err(SpecError::new(
                    "spec.seed",
                    "set exactly one of content and copyFromHost",
                ));
            }
        }),
    };
    let placement = spec.placement.clone().unwrap_or_default();
    let host = match placement.host {
        Some(h) if !is_hostname(&h) => {
            return Err(SpecError::new(
                "spec.placement.host",
                format!("{h:?} is not a host name or IP address as Mesos reports it"),
            ));
        }
        h => h,
    };
    if let Some(bad) = placement.avoid_hosts.iter().find(|h| !is_hostname(h)) {
        return Err(SpecError::new(
            "spec.placement.avoidHosts",
            format!("{bad:?} is not a host name or IP address as Mesos reports it"),
        ));
    }
    if let Some(h) = host.as_ref().filter(|h| placement.avoid_hosts.contains(h)) {
        return Err(SpecError::new(
            "spec.placement.host",
            format!("{h} is also in placement.avoidHosts; remove it from one of them"),
        ));
    }
    let host_loss_after = match spec.host_loss.as_ref().and_then(|l| l.after.as_deref()) {
        None => DEFAULT_HOST_LOSS_AFTER,
        Some(text) => match humantime::parse_duration(text) {
            Ok(d) if d >= MIN_HOST_LOSS_AFTER => d,
            Ok(_) => {
                return Err(SpecError::new(
                    "spec.hostLoss.after",
                    format!("{text:?} is shorter than 1m; a host that restarts must not lose its volumes"),
                ));
            }
            Err(e) => {
                return Err(SpecError::new(
                    "spec.hostLoss.after",
                    format!("{text:?} is not a duration such as 10m or 1h30m: {e}"),
                ));
            }
        },
    };
    let capacity_bytes = match &spec.capacity {
        Some(q) => {
            let bytes = parse_bytes(&q.0).map_err(|m| SpecError::new("spec.capacity", m))?;
            if bytes < MIN_CAPACITY {
                return Err(SpecError::new(
                    "spec.capacity",
                    format!(
                        "{:?} is below 1Mi, the smallest capacity a host can hold a volume to",
                        q.0
                    ),
                ));
            }
            Some(bytes)
        }
        None => None,
    };
    Ok(VolumeRequest {
        tenant: tenant.clone(),
        app,
        container_path,
        host_path,
        host_path_abs,
        kind: spec.type_,
        read_only: spec.read_only,
        owner: spec.owner,
        mode,
        seed,
        host,
        avoid_hosts: placement.avoid_hosts,
        host_loss: spec.host_loss.as_ref().map(|l| l.policy).unwrap_or_default(),
        host_loss_after,
        capacity_bytes,
        reclaim: spec.reclaim_policy,
        allow_concurrent_writers: spec.allow_concurrent_writers,
    })
}

/// Octal permission bits without setuid, setgid or sticky: `"0640"` or `"640"`.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix('0').filter(|d| d.len() == 3).unwrap_or(s);
    if digits.len() != 3 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(format!(
            "{s:?} is not an octal mode such as \"0640\" (three octal digits, optionally after a 0; no setuid, setgid or sticky bits)"
        ));
    }
    u32::from_str_radix(digits, 8).map_err(|e| e.to_string())
}

/// Why a number is not accepted as permissions, with the string to write instead.
fn unquoted_mode(n: &serde_json::Number) -> String {
    match n.as_u64().filter(|n| *n <= 0o777) {
        Some(bits) => format!(
            "is the number {n} (YAML reads an unquoted {bits:04o} as an octal number): write permissions as a quoted string such as \"{bits:04o}\""
        ),
        None => format!("is the number {n}: write permissions as a quoted string such as \"0755\""),
    }
}

/// A host name or IPv4 address: letters, digits, '.' and '-', starting and ending with a letter or
/// digit, at most 253 bytes.
fn is_hostname(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 253
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'.' || *c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// The smallest capacity: the agents hold volumes to no less.
pub const MIN_CAPACITY: u64 = 1 << 20;

/// Bytes in a Kubernetes quantity such as `10Gi`, `500M` or `1073741824`, rounded up.
pub fn parse_bytes(q: &str) -> Result<u64, String> {
    let bad = || format!("{q:?} is not a size such as 10Gi, 500Mi or 1G");
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let multiplier: u128 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        _ => return Err(bad()),
    };
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty() || frac.contains('.') || frac.len() > 9 {
        return Err(bad());
    }
    let int: u128 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| bad())?
    };
    let frac_scale = 10u128.pow(frac.len() as u32);
    let frac: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| bad())?
    };
    let total = (int * frac_scale + frac)
        .checked_mul(multiplier)
        .ok_or_else(bad)?
        .div_ceil(frac_scale);
    u64::try_from(total).map_err(|_| bad())
}
