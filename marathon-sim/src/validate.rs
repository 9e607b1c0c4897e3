//! Marathon 1.5+ validation of app ids and definitions (`PathId`, `AppValidation`,
//! `SchedulingValidation`), with Marathon's messages where the reference quotes them.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::{Map, Value};

use crate::errors::{ApiError, Detail};
use crate::placement::full_match_regex;

/// `PathId.ID_PATH_SEGMENT_PATTERN`.
const SEGMENT_PATTERN: &str =
    r"^(([a-z0-9]|[a-z0-9][a-z0-9\-]*[a-z0-9])\.)*([a-z0-9]|[a-z0-9][a-z0-9\-]*[a-z0-9])$";
static SEGMENT: LazyLock<Regex> = LazyLock::new(|| Regex::new(SEGMENT_PATTERN).expect("static pattern"));
static IS_VALUE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-zA-Z0-9_/.\-]*$").expect("static pattern"));

const OPERATORS: [&str; 7] = ["UNIQUE", "CLUSTER", "GROUP_BY", "LIKE", "MAX_PER", "UNLIKE", "IS"];
const RESERVED_LAST_SEGMENTS: [&str; 3] = ["restart", "tasks", "versions"];

/// Makes `raw` absolute relative to `/`, resolving `.` and `..`, and checks each segment.
pub fn canonical_app_id(raw: &str) -> Result<String, ApiError> {
    let mut segments: Vec<&str> = Vec::new();
    for segment in raw.split('/').filter(|s| !s.is_empty()) {
        match segment {
            "." => {}
            ".." => {
                segments.pop();
            }
            s if SEGMENT.is_match(s) => segments.push(s),
            _ => {
                return Err(ApiError::invalid(vec![Detail::new(
                    "/id",
                    format!("must fully match regular expression '{SEGMENT_PATTERN}'"),
                )]));
            }
        }
    }
    let Some(last) = segments.last() else {
        return Err(ApiError::invalid(vec![Detail::new(
            "/id",
            "Path must contain at least one path element",
        )]));
    };
    if RESERVED_LAST_SEGMENTS.contains(last) || raw.ends_with("/.") || raw.ends_with("/..") {
        return Err(ApiError::invalid(vec![Detail::new(
            "/id",
            "must not end with any of the following reserved keywords: restart, tasks, versions, ., ..",
        )]));
    }
    Ok(format!("/{}", segments.join("/")))
}

/// Shape checks (the RAML reader): errors here give 422 "Invalid JSON".
pub fn check_shape(app: &Map<String, Value>) -> Result<(), ApiError> {
    let mut details = Vec::new();
    if let Some(instances) = app.get("instances")
        && !instances.is_i64()
        && !instances.is_u64()
    {
        details.push(Detail::new("/instances", "error.expected.jsnumber"));
    }
    if let Some(container) = app.get("container").filter(|c| !c.is_null()) {
        match container.as_object() {
            None => details.push(Detail::new("/container", "error.expected.jsobject")),
            Some(container) => check_container_shape(container, &mut details),
        }
    }
    if let Some(constraints) = app.get("constraints") {
        match constraints.as_array() {
            None => details.push(Detail::new("/constraints", "error.expected.jsarray")),
            Some(list) => {
                for (i, c) in list.iter().enumerate() {
                    let strings = c
                        .as_array()
                        .is_some_and(|parts| parts.iter().all(Value::is_string));
                    if !strings {
                        details.push(Detail::new(
                            format!("/constraints({i})"),
                            "error.expected.jsarray",
                        ));
                    }
                }
            }
        }
    }
    if details.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid_shape(details))
    }
}

fn check_container_shape(container: &Map<String, Value>, details: &mut Vec<Detail>) {
    if let Some(docker) = container.get("docker").and_then(Value::as_object)
        && !docker.get("image").is_some_and(Value::is_string)
    {
        details.push(Detail::new("/container/docker/image", "error.path.missing"));
    }
    let Some(volumes) = container.get("volumes") else {
        return;
    };
    let Some(volumes) = volumes.as_array() else {
        details.push(Detail::new("/container/volumes", "error.expected.jsarray"));
        return;
    };
    for (i, volume) in volumes.iter().enumerate() {
        let Some(volume) = volume.as_object() else {
            details.push(Detail::new(
                format!("/container/volumes({i})"),
                "error.expected.jsobject",
            ));
            continue;
        };
        // The union reader tries persistent, external, secret, then host: a volume with none of
        // the first three keys must carry all three host-volume keys.
        if ["persistent", "external", "secret"]
            .iter()
            .any(|k| volume.contains_key(*k))
        {
            continue;
        }
        for key in ["containerPath", "hostPath", "mode"] {
            match volume.get(key) {
                None | Some(Value::Null) => details.push(Detail::new(
                    format!("/container/volumes({i})/{key}"),
                    "error.path.missing",
                )),
                Some(Value::String(_)) => {}
                Some(_) => details.push(Detail::new(
                    format!("/container/volumes({i})/{key}"),
                    "error.expected.jsstring",
                )),
            }
        }
        if let Some(mode) = volume.get("mode").and_then(Value::as_str)
            && mode != "RW"
            && mode != "RO"
        {
            details.push(Detail::new(
                format!("/container/volumes({i})/mode"),
                "error.unknown.enum.literal",
            ));
        }
    }
}

/// Semantic checks: errors here give 422 "Object is not valid".
pub fn check_semantics(app: &Map<String, Value>) -> Result<(), ApiError> {
    let mut details = Vec::new();
    if let Some(n) = app.get("instances").and_then(Value::as_i64)
        && n < 0
    {
        details.push(Detail::new(
            "/instances",
            "got -1, expected 0 or more".replace("-1", &n.to_string()),
        ));
    }
    if let Some(volumes) = app
        .get("container")
        .and_then(|c| c.get("volumes"))
        .and_then(Value::as_array)
    {
        for (i, volume) in volumes.iter().enumerate() {
            let Some(volume) = volume.as_object() else {
                continue;
            };
            if ["persistent", "external", "secret"]
                .iter()
                .any(|k| volume.contains_key(*k))
            {
                if volume.contains_key("hostPath") && volume.contains_key("persistent") {
                    details.push(Detail::new(
                        format!("/container/volumes({i})"),
                        "hostPath may not be set with persistent",
                    ));
                }
                continue;
            }
            for key in ["containerPath", "hostPath"] {
                if volume.get(key).and_then(Value::as_str) == Some("") {
                    details.push(Detail::new(
                        format!("/container/volumes({i})/{key}"),
                        "must not be empty",
                    ));
                }
            }
        }
    }
    if let Some(constraints) = app.get("constraints").and_then(Value::as_array) {
        for (i, c) in constraints.iter().enumerate() {
            if let Some(error) = constraint_error(c) {
                details.push(Detail::new(format!("/constraints({i})"), error));
            }
        }
    }
    if let Some(strategy) = app.get("upgradeStrategy").and_then(Value::as_object) {
        for key in ["minimumHealthCapacity", "maximumOverCapacity"] {
            if let Some(v) = strategy.get(key).and_then(Value::as_f64) {
                if v > 1.0 {
                    details.push(Detail::new(
                        format!("/upgradeStrategy/{key}"),
                        "is greater than 1",
                    ));
                } else if v < 0.0 {
                    details.push(Detail::new(format!("/upgradeStrategy/{key}"), "is less than 0"));
                }
            }
        }
    }
    if details.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(details))
    }
}

/// `SchedulingValidation.complyWithAppConstraintRules` (1.5+ messages).
fn constraint_error(constraint: &Value) -> Option<String> {
    let parts: Vec<&str> = constraint.as_array()?.iter().filter_map(Value::as_str).collect();
    if parts.len() != 2 && parts.len() != 3 {
        return Some("Each constraint must have either 2 or 3 fields".into());
    }
    if parts[0].is_empty() || parts[1].is_empty() {
        return Some("illegal constraint specification".into());
    }
    let operator = parts[1].to_uppercase();
    if !OPERATORS.contains(&operator.as_str()) {
        return Some(
            "operator must be one of the following UNIQUE, CLUSTER, GROUP_BY, LIKE, MAX_PER, UNLIKE or IS"
                .into(),
        );
    }
    let value = parts.get(2).copied();
    match operator.as_str() {
        "UNIQUE" if value.is_some() => Some("UNIQUE does not accept a value".into()),
        "MAX_PER" if value.is_none_or(|v| v.parse::<i64>().is_err()) => {
            Some("MAX_PER requires an integer value".into())
        }
        "GROUP_BY" if value.is_some_and(|v| !v.is_empty() && v.parse::<i64>().is_err()) => {
            Some("GROUP_BY may either have no value or an integer value".into())
        }
        "LIKE" | "UNLIKE" => match value {
            None | Some("") => Some("LIKE and UNLIKE require a non-empty, regular expression value".into()),
            Some(v) if full_match_regex(v).is_err() => {
                Some(format!("'{v}' is not a valid regular expression"))
            }
            _ => None,
        },
        "IS" if value.is_none_or(|v| !IS_VALUE.is_match(v)) => {
            Some("IS requires a value matching ^[a-zA-Z0-9_/.-]*$".into())
        }
        _ => None,
    }
}

/// Validation upper-cases operators, but the conversion to the stored enum needs the exact
/// upper-case name; Marathon then fails with an `IllegalArgumentException` (422 `{message}`).
pub fn check_operator_case(app: &Map<String, Value>) -> Result<(), ApiError> {
    for c in app
        .get("constraints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(op) = c.get(1).and_then(Value::as_str)
            && !OPERATORS.contains(&op)
        {
            return Err(ApiError::message(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                format!("No enum constant mesosphere.marathon.raml.ConstraintOperator.{op}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_resolve_and_validate() {
        assert_eq!(canonical_app_id("prod/web").ok().as_deref(), Some("/prod/web"));
        assert_eq!(
            canonical_app_id("/prod/./x/../web").ok().as_deref(),
            Some("/prod/web")
        );
        assert!(canonical_app_id("/Prod").is_err());
        assert!(canonical_app_id("/prod/-web").is_err());
        assert!(canonical_app_id("/prod/tasks").is_err());
    }
}
