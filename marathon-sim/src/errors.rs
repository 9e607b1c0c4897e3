//! Marathon's error bodies (`MarathonExceptionMapper`), as HTTP responses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// An error reply: a status and Marathon's JSON body.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: Value,
}

impl ApiError {
    pub fn message(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({ "message": message.into() }),
        }
    }

    pub fn app_not_found(app_id: &str) -> Self {
        Self::message(StatusCode::NOT_FOUND, format!("App '{app_id}' does not exist"))
    }

    pub fn app_exists(app_id: &str) -> Self {
        Self::message(
            StatusCode::CONFLICT,
            format!("An app with id [{app_id}] already exists."),
        )
    }

    /// The lock body is the same in every version; `<DEPLOYMENT_ID>` is literal text.
    pub fn locked(deployment_ids: &[String]) -> Self {
        Self {
            status: StatusCode::CONFLICT,
            body: json!({
                "message": "App is locked by one or more deployments. Override with the option '?force=true'. View details at '/v2/deployments/<DEPLOYMENT_ID>'.",
                "deployments": deployment_ids.iter().map(|id| json!({ "id": id })).collect::<Vec<_>>(),
            }),
        }
    }

    /// Semantic validation failure (422, "Object is not valid").
    pub fn invalid(details: Vec<Detail>) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            body: json!({ "message": "Object is not valid", "details": details_json(&details) }),
        }
    }

    /// Shape failure: 422 from 1.5 on when every nested error is a validation error.
    pub fn invalid_shape(details: Vec<Detail>) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            body: json!({ "message": "Invalid JSON", "details": details_json(&details) }),
        }
    }

    /// Unparseable body.
    pub fn malformed_json(parser_message: String) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            body: json!({ "message": "Invalid JSON", "details": parser_message }),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

/// One validation detail: a path like `/container/volumes(0)/mode` and its errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detail {
    pub path: String,
    pub errors: Vec<String>,
}

impl Detail {
    pub fn new(path: impl Into<String>, error: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            errors: vec![error.into()],
        }
    }
}

fn details_json(details: &[Detail]) -> Value {
    Value::Array(
        details
            .iter()
            .map(|d| json!({ "path": d.path, "errors": d.errors }))
            .collect(),
    )
}
