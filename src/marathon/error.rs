//! Errors from Marathon, typed from its status codes and bodies (`MarathonExceptionMapper`).

use serde::Deserialize;
use serde_json::Value;

use crate::report::error_chain;

/// One entry of a 422 body's `details`: the field path and its errors.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ValidationDetail {
    pub path: String,
    #[serde(default)]
    pub errors: Vec<String>,
}

/// `Connect` and `Transport` print the whole cause (reqwest's own message is only "error sending
/// request"; the "Connection refused" is in its causes), and hold reqwest's error without its URL,
/// which the variant already names.
#[derive(Debug, thiserror::Error)]
pub enum MarathonError {
    #[error("Marathon: {message} (check the app id and that the app was not deleted)")]
    NotFound { message: String },

    #[error(
        "Marathon: app is locked by deployment(s) {}; wait for them to finish, or cancel them with DELETE /v2/deployments/<id>",
        deployment_ids.join(", ")
    )]
    Locked {
        deployment_ids: Vec<String>,
        message: String,
    },

    #[error(
        "Marathon rejected the app ({message}): {}; fix these fields",
        render_details(details)
    )]
    Validation {
        message: String,
        details: Vec<ValidationDetail>,
    },

    #[error("Marathon: {message} (the request conflicts with the current state; re-read it and retry)")]
    Conflict { message: String },

    #[error(
        "Marathon refused the credentials (HTTP {status}); check the basic-auth user/password or the DC/OS token"
    )]
    Unauthorized { status: u16, message: String },

    #[error(
        "Marathon rejected the request (HTTP {status}): {message}; the request berth built is wrong, please report it"
    )]
    BadRequest {
        status: u16,
        message: String,
        body: Value,
    },

    #[error("Marathon failed (HTTP {status}) at {url}: {message}; it will be retried")]
    Server {
        status: u16,
        url: String,
        message: String,
    },

    #[error(
        "Marathon at {url} did not answer in time; it will be retried (check Marathon's health or raise the timeout)"
    )]
    Timeout { url: String },

    #[error(
        "cannot connect to Marathon at {url}: {}; check the URL, DNS, TLS CA and that Marathon runs",
        error_chain(source)
    )]
    Connect {
        url: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("request to Marathon at {url} failed: {}", error_chain(source))]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("unexpected reply from Marathon at {url}: {message}; is this URL really Marathon's API?")]
    InvalidResponse { url: String, message: String },

    #[error("Marathon client configuration: {0}")]
    Config(String),
}

fn render_details(details: &[ValidationDetail]) -> String {
    if details.is_empty() {
        return "no details".into();
    }
    details
        .iter()
        .map(|d| format!("{}: {}", d.path, d.errors.join("; ")))
        .collect::<Vec<_>>()
        .join(", ")
}

impl MarathonError {
    /// True for failures that another attempt (or another Marathon instance) may not have:
    /// 5xx, timeouts and connection errors. 409 locks are retried by the caller with backoff.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            MarathonError::Server { .. } | MarathonError::Timeout { .. } | MarathonError::Connect { .. }
        )
    }

    /// Builds the error for a non-success reply from its status and body.
    pub fn from_response(status: u16, url: &str, body: &str) -> Self {
        let json: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        let message = json
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| body.chars().take(500).collect());
        match status {
            401 | 403 => MarathonError::Unauthorized { status, message },
            404 => MarathonError::NotFound { message },
            409 => match json.get("deployments").and_then(Value::as_array) {
                // The message's `<DEPLOYMENT_ID>` is literal: the real ids are only here.
                Some(deployments) => MarathonError::Locked {
                    deployment_ids: deployments
                        .iter()
                        .filter_map(|d| d.get("id").and_then(Value::as_str).map(str::to_string))
                        .collect(),
                    message,
                },
                None => MarathonError::Conflict { message },
            },
            422 => MarathonError::Validation {
                message,
                details: json
                    .get("details")
                    .cloned()
                    .and_then(|d| serde_json::from_value(d).ok())
                    .unwrap_or_default(),
            },
            500..=599 => MarathonError::Server {
                status,
                url: url.to_string(),
                message,
            },
            _ => MarathonError::BadRequest {
                status,
                message,
                body: json,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_takes_ids_from_deployments_not_the_message() {
        let body = r#"{"message":"App is locked by one or more deployments. Override with the option '?force=true'. View details at '/v2/deployments/<DEPLOYMENT_ID>'.","deployments":[{"id":"97c136bf-5a28-4821-9d94-480d9fbb01c8"}]}"#;
        match MarathonError::from_response(409, "u", body) {
            MarathonError::Locked { deployment_ids, .. } => {
                assert_eq!(deployment_ids, ["97c136bf-5a28-4821-9d94-480d9fbb01c8"])
            }
            other => panic!("{other:?}"),
        }
        let exists =
            MarathonError::from_response(409, "u", r#"{"message":"An app with id [/x] already exists."}"#);
        assert!(matches!(exists, MarathonError::Conflict { .. }));
    }

    #[test]
    fn validation_keeps_paths() {
        let body = r#"{"message":"Object is not valid","details":[{"path":"/upgradeStrategy/minimumHealthCapacity","errors":["is greater than 1"]}]}"#;
        let err = MarathonError::from_response(422, "u", body);
        assert!(
            err.to_string()
                .contains("/upgradeStrategy/minimumHealthCapacity: is greater than 1")
        );
        assert!(!err.is_retryable());
        assert!(MarathonError::from_response(503, "u", "").is_retryable());
    }
}
