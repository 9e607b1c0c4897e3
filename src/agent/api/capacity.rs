//! Wire types of capacity limits and usage: the `capacityBytes` of an ensure, the `limit` of its
//! answer, the host's quota support and `POST /v1/usage`.

use serde::{Deserialize, Deserializer, Serialize, de::Error as _};

use super::{EnsureVolumeRequest, ErrorDetail, IdentityCheck, VolumeQuery, VolumeState};

/// How the filesystem of the agent's root can limit a directory volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QuotaKind {
    /// btrfs: each limited volume is a subvolume whose qgroup carries the limit.
    BtrfsQgroup,
    /// XFS: each limited volume has a project id whose quota carries the limit.
    XfsProject,
    /// No per-directory limits: capacities only steer placement.
    #[default]
    None,
}

/// `quota` of `GET /v1/host`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuotaInfo {
    pub kind: QuotaKind,
    /// True when new volumes with a capacity get a limit the kernel enforces.
    pub enforced: bool,
    /// Why not (or what to know), in words for the host's administrator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `PUT /v1/volumes` (and each volume of a batch): an [`EnsureVolumeRequest`], the volume's
/// capacity, and the identity its data must carry. Without `capacityBytes` the volume has no
/// limit: a limit berth set earlier is lifted. Without `identity` nothing is checked or marked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnsureBody {
    #[serde(flatten)]
    pub request: EnsureVolumeRequest,
    /// Most bytes the volume may hold (directory volumes; at least 1 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_bytes: Option<u64>,
    #[serde(flatten)]
    pub check: IdentityCheck,
}

impl<'de> Deserialize<'de> for EnsureBody {
    /// `capacityBytes`, `identity` and `expect` are taken out and the rest read as an
    /// [`EnsureVolumeRequest`], so unknown fields are still refused with the same message.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut map = serde_json::Map::deserialize(d)?;
        let capacity_bytes = match map.remove("capacityBytes") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => {
                Some(u64::deserialize(v).map_err(|e| D::Error::custom(format!("capacityBytes: {e}")))?)
            }
        };
        let mut check = serde_json::Map::new();
        for key in ["identity", "expect"] {
            if let Some(v) = map.remove(key) {
                check.insert(key.to_owned(), v);
            }
        }
        let check = IdentityCheck::deserialize(serde_json::Value::Object(check)).map_err(D::Error::custom)?;
        let request =
            EnsureVolumeRequest::deserialize(serde_json::Value::Object(map)).map_err(D::Error::custom)?;
        Ok(Self {
            request,
            capacity_bytes,
            check,
        })
    }
}

impl From<EnsureVolumeRequest> for EnsureBody {
    fn from(request: EnsureVolumeRequest) -> Self {
        Self {
            request,
            capacity_bytes: None,
            check: IdentityCheck::default(),
        }
    }
}

/// The answer of `PUT /v1/volumes`: the volume's state, its limit when a capacity was asked
/// for, and the identity its data carries when one was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnsuredVolume {
    #[serde(flatten)]
    pub state: VolumeState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<LimitState>,
    /// The identity the data carries now (absent when none was asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<crate::agent::identity::VolumeIdentity>,
    /// True when this request marked existing data as the volume's (adopted it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopted: bool,
}

/// What holds a volume to its capacity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LimitState {
    /// The mechanism (`none` where the filesystem has none).
    pub kind: QuotaKind,
    /// The capacity asked for.
    pub requested_bytes: u64,
    /// The limit the kernel holds the volume to now; absent when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// True when the kernel enforces a limit of exactly `requestedBytes` on the whole volume.
    pub enforced: bool,
    /// When not enforced (or not as asked): why, and what to do. Safe to show the tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /v1/usage`: the volumes of one host to measure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UsageRequest {
    pub volumes: Vec<VolumeQuery>,
}

/// Where a usage figure comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UsageSource {
    /// The filesystem's quota accounting: current (btrfs: as of the last transaction commit,
    /// 30 s by default).
    Quota,
    /// A walk of the tree, repeated at most every `--usage-walk-interval`: may be that old.
    Walk,
}

/// The answer of `POST /v1/usage`, in the order asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageResponse {
    pub volumes: Vec<UsageReport>,
}

/// One volume's usage, or why it has none.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageReport {
    pub tenant: String,
    pub host_path: String,
    /// Bytes the volume uses (allocated, or referenced for btrfs qgroups). Absent until a first
    /// walk measured it, and on error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<u64>,
    /// Inodes (files, directories, …) in the volume; absent where the source does not count
    /// them (btrfs qgroups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_inodes: Option<u64>,
    /// The limit the kernel enforces, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<UsageSource>,
    /// When the figures were measured (RFC 3339, UTC). Absent while a first walk is pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_at: Option<String>,
    /// Subvolumes made inside the volume (btrfs): counted in `usedBytes`, but not held to the
    /// volume's limit.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub nested_subvolumes: u64,
    /// The walk stopped at the agent's depth limit or skipped mount points: `usedBytes` is a
    /// lower bound.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
    /// Why this volume has no figures (e.g. `not_found`); the other volumes are unaffected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_optional_and_unknown_fields_are_still_refused() {
        let r: EnsureBody =
            serde_json::from_str(r#"{"tenant":"toto","hostPath":"/a","capacityBytes":1048576}"#).unwrap();
        assert_eq!(r.capacity_bytes, Some(1 << 20));
        assert_eq!(r.request.host_path, "/a");
        let r: EnsureBody = serde_json::from_str(r#"{"tenant":"toto","hostPath":"/a"}"#).unwrap();
        assert_eq!(r.capacity_bytes, None);
        let e = serde_json::from_str::<EnsureBody>(r#"{"tenant":"toto","hostPath":"/a","readonly":true}"#)
            .unwrap_err();
        assert!(e.to_string().contains("unknown field `readonly`"), "{e}");
        let e = serde_json::from_str::<EnsureBody>(r#"{"tenant":"toto","hostPath":"/a","capacityBytes":-1}"#)
            .unwrap_err();
        assert!(e.to_string().contains("capacityBytes"), "{e}");
        let back = serde_json::to_value(EnsureBody {
            capacity_bytes: Some(5),
            ..r
        })
        .unwrap();
        assert_eq!(back["capacityBytes"], 5);
        assert_eq!(back["hostPath"], "/a");
    }

    #[test]
    fn kinds_are_kebab_case() {
        assert_eq!(
            serde_json::to_string(&QuotaKind::BtrfsQgroup).unwrap(),
            "\"btrfs-qgroup\""
        );
        assert_eq!(
            serde_json::to_string(&QuotaKind::XfsProject).unwrap(),
            "\"xfs-project\""
        );
        assert_eq!(serde_json::to_string(&UsageSource::Walk).unwrap(), "\"walk\"");
    }
}
