//! What a failed call to Marathon or an agent means for a pass, decided in one place.
//!
//! Three kinds matter, because each asks for a different reaction:
//! - **unreachable**: no answer. It says nothing about the data or the app: wait, retry with
//!   back-off, never delete or re-place because of it;
//! - **transient**: the other side answered that it failed, or a race that resolves itself (a
//!   Marathon 409 lock, an agent's `concurrent_change`): retry with back-off, nothing to fix;
//! - **refused**: the other side answered that the request cannot work as it is: the user must
//!   change something (the status says what), and berth waits for that change.

use crate::{agent::client::AgentClientError, marathon::MarathonError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Unreachable,
    Transient,
    Refused,
}

/// A classified failure with a message a tenant may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: Kind,
    /// What went wrong; never names an agent URL, a credential or a host path outside the
    /// tenant's data.
    pub message: String,
    /// The agent's error code, when an agent answered (`type_mismatch`, ...).
    pub code: Option<String>,
}

impl Failure {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            code: None,
        }
    }

    /// An agent's answer (or the lack of one).
    pub fn agent(host: &str, e: &AgentClientError) -> Self {
        match e {
            AgentClientError::Unreachable { reason, .. } => Self::new(
                Kind::Unreachable,
                format!("the agent of {host} did not answer ({reason})"),
            ),
            AgentClientError::Rejected { code, message, .. } => Self {
                // A race inside the tenant's tree resolves itself, and a long delete finishes:
                // retry, nothing to fix.
                kind: if code == "concurrent_change" || code == "delete_in_progress" {
                    Kind::Transient
                } else {
                    Kind::Refused
                },
                message: message.clone(),
                code: Some(code.clone()),
            },
            AgentClientError::AgentFailed { code, message, .. } => Self {
                kind: Kind::Transient,
                message: format!("the agent of {host} failed: {message}"),
                code: Some(code.clone()),
            },
            AgentClientError::InvalidResponse { reason, .. } => Self::new(
                Kind::Transient,
                format!(
                    "the agent of {host} sent an answer berth does not understand ({reason}); check that agent and controller versions match"
                ),
            ),
            AgentClientError::Config(m) => Self::new(
                Kind::Transient,
                format!("cannot talk to the agent of {host}: {m}"),
            ),
        }
    }

    /// Marathon's answer (or the lack of one).
    pub fn marathon(e: &MarathonError) -> Self {
        let kind = match e {
            MarathonError::Timeout { .. }
            | MarathonError::Connect { .. }
            | MarathonError::Transport { .. } => Kind::Unreachable,
            MarathonError::Server { .. }
            | MarathonError::Locked { .. }
            | MarathonError::Conflict { .. }
            | MarathonError::InvalidResponse { .. }
            | MarathonError::Unauthorized { .. }
            | MarathonError::Config(_) => Kind::Transient,
            MarathonError::Validation { .. }
            | MarathonError::BadRequest { .. }
            | MarathonError::NotFound { .. } => Kind::Refused,
        };
        Self::new(kind, e.to_string())
    }

    /// Marathon not answering a read, in a few words that do not change from one request to the
    /// next (no URL), so that statuses stay the same while an outage lasts.
    pub fn marathon_outage(e: &MarathonError) -> Self {
        let reason = match e {
            MarathonError::Server { status, .. } => format!("HTTP {status}"),
            MarathonError::Timeout { .. } => "no answer in time".to_owned(),
            MarathonError::Connect { .. } => "cannot connect".to_owned(),
            MarathonError::Transport { .. } => "the connection failed".to_owned(),
            MarathonError::Unauthorized { status, .. } => {
                format!("credentials refused, HTTP {status}: check the controller's Marathon credentials")
            }
            MarathonError::InvalidResponse { .. } => "an answer that is not Marathon's".to_owned(),
            other => other.to_string(),
        };
        Self::new(
            Self::marathon(e).kind,
            format!("Marathon is unavailable ({reason})"),
        )
    }

    /// A label for metrics.
    pub fn label(&self) -> &'static str {
        match self.kind {
            Kind::Unreachable => "unreachable",
            Kind::Transient => "transient",
            Kind::Refused => "refused",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(code: &str) -> AgentClientError {
        AgentClientError::Rejected {
            status: 409,
            code: code.into(),
            message: "m".into(),
        }
    }

    #[test]
    fn an_agents_race_is_transient_and_its_refusals_need_the_user() {
        assert_eq!(
            Failure::agent("n", &rejected("concurrent_change")).kind,
            Kind::Transient
        );
        let f = Failure::agent("n", &rejected("type_mismatch"));
        assert_eq!(f.kind, Kind::Refused);
        assert_eq!(f.code.as_deref(), Some("type_mismatch"));
        let failed = AgentClientError::AgentFailed {
            status: 500,
            code: "io".into(),
            message: "disk".into(),
        };
        assert_eq!(Failure::agent("n", &failed).kind, Kind::Transient);
    }

    #[test]
    fn marathon_locks_and_5xx_are_transient_422_is_refused() {
        let lock =
            MarathonError::from_response(409, "u", r#"{"message":"locked","deployments":[{"id":"d"}]}"#);
        assert_eq!(Failure::marathon(&lock).kind, Kind::Transient);
        assert_eq!(
            Failure::marathon(&MarathonError::from_response(503, "u", "")).kind,
            Kind::Transient
        );
        assert_eq!(
            Failure::marathon(&MarathonError::from_response(422, "u", r#"{"message":"bad"}"#)).kind,
            Kind::Refused
        );
        assert_eq!(
            Failure::marathon(&MarathonError::Timeout { url: "u".into() }).kind,
            Kind::Unreachable
        );
    }
}
