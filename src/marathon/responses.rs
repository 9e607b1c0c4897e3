//! Typed replies of Marathon endpoints other than apps: changes, deployments, queue, info.

use serde::Deserialize;
use serde_json::{Map, Value};

/// `{deploymentId, version}` from a change.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentResult {
    pub deployment_id: String,
    /// The plan (root group) version.
    pub version: String,
}

/// An entry of `GET /v2/deployments`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    pub id: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub affected_apps: Vec<String>,
    #[serde(default)]
    pub current_step: u32,
    #[serde(default)]
    pub total_steps: u32,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An entry of `GET /v2/queue`: launches waiting for a matching offer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueEntry {
    #[serde(default)]
    pub app: Option<Value>,
    #[serde(default)]
    pub count: u32,
    #[serde(default)]
    pub since: Option<String>,
    #[serde(default)]
    pub processed_offers_summary: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl QueueEntry {
    pub fn app_id(&self) -> Option<&str> {
        self.app.as_ref()?.get("id")?.as_str()
    }

    /// Offers declined for `UnfulfilledConstraint` in the last round: a constraint no agent meets.
    pub fn declined_by_constraints(&self) -> u64 {
        self.processed_offers_summary
            .as_ref()
            .and_then(|s| s.get("rejectSummaryLastOffers"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|r| r.get("reason").and_then(Value::as_str) == Some("UnfulfilledConstraint"))
            .filter_map(|r| r.get("declined").and_then(Value::as_u64))
            .sum()
    }
}

/// `GET /v2/info`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MarathonInfo {
    #[serde(default)]
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub leader: Option<String>,
    #[serde(default)]
    pub elected: bool,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl MarathonInfo {
    /// `(major, minor)` of `version` (e.g. `1.10.26` → (1, 10)); None if unparseable.
    pub fn major_minor(&self) -> Option<(u32, u32)> {
        let mut parts = self.version.split(['.', '-']);
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    }

    /// 1.5+ writes `networks` and `container.portMappings` instead of the 1.4 forms.
    pub fn has_1_5_networking(&self) -> bool {
        self.major_minor().is_some_and(|v| v >= (1, 5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_parsing() {
        let info = |v: &str| MarathonInfo {
            name: "marathon".into(),
            version: v.into(),
            leader: None,
            elected: true,
            extra: Map::new(),
        };
        assert_eq!(info("1.10.26").major_minor(), Some((1, 10)));
        assert!(info("1.5.0").has_1_5_networking());
        assert!(!info("1.4.13").has_1_5_networking());
    }
}
