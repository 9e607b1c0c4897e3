//! Stored app definitions: which fields are kept, Marathon's defaults, and how two definitions
//! differ (configuration change, scale, or nothing).

use serde_json::{Map, Value, json};

/// Top-level fields of a stored app definition. Marathon ignores other input fields, and
/// response-only fields (`tasks`, `deployments`, counts, ...) are never stored.
pub const DEFINITION_FIELDS: [&str; 37] = [
    "id",
    "cmd",
    "args",
    "user",
    "env",
    "instances",
    "cpus",
    "mem",
    "disk",
    "gpus",
    "executor",
    "constraints",
    "fetch",
    "uris",
    "storeUrls",
    "backoffSeconds",
    "backoffFactor",
    "maxLaunchDelaySeconds",
    "container",
    "healthChecks",
    "readinessChecks",
    "dependencies",
    "upgradeStrategy",
    "labels",
    "acceptedResourceRoles",
    "ipAddress",
    "residency",
    "secrets",
    "taskKillGracePeriodSeconds",
    "unreachableStrategy",
    "killSelection",
    "networks",
    "portDefinitions",
    "ports",
    "requirePorts",
    "role",
    "tty",
];

/// Fields whose change is a scale, not a configuration change.
const SCALE_FIELDS: [&str; 1] = ["instances"];
/// Fields that never take part in change detection.
const VERSION_FIELDS: [&str; 3] = ["id", "version", "versionInfo"];

/// How an update changes an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    ScaleOnly,
    Config,
}

/// Compares two definitions the way `AppDefinition.isUpgrade`/`isOnlyScaleChange` do, with
/// `constraints` compared as a set.
pub fn classify_change(old: &Map<String, Value>, new: &Map<String, Value>) -> Change {
    let config_equal = DEFINITION_FIELDS
        .iter()
        .filter(|f| !SCALE_FIELDS.contains(f) && !VERSION_FIELDS.contains(f))
        .all(|f| field_equal(f, old.get(*f), new.get(*f)));
    let scale_equal = old.get("instances") == new.get("instances");
    match (config_equal, scale_equal) {
        (true, true) => Change::None,
        (true, false) => Change::ScaleOnly,
        (false, _) => Change::Config,
    }
}

fn field_equal(field: &str, a: Option<&Value>, b: Option<&Value>) -> bool {
    if field == "constraints" {
        let set = |v: Option<&Value>| -> Vec<Value> {
            let mut items: Vec<Value> = v.and_then(Value::as_array).cloned().unwrap_or_default();
            items.sort_by_key(|x| x.to_string());
            items.dedup();
            items
        };
        return set(a) == set(b);
    }
    a.filter(|v| !v.is_null()) == b.filter(|v| !v.is_null())
}

/// Marathon's defaults for fields a full definition leaves out.
pub fn with_defaults(mut definition: Map<String, Value>) -> Map<String, Value> {
    let defaults = [
        ("instances", json!(1)),
        ("cpus", json!(1.0)),
        ("mem", json!(128.0)),
        ("disk", json!(0.0)),
        ("constraints", json!([])),
        ("labels", json!({})),
        ("env", json!({})),
        (
            "upgradeStrategy",
            json!({ "minimumHealthCapacity": 1.0, "maximumOverCapacity": 1.0 }),
        ),
    ];
    for (key, value) in defaults {
        match definition.get(key) {
            Some(v) if !v.is_null() => {}
            _ => {
                definition.insert(key.to_string(), value);
            }
        }
    }
    dedup_constraints(&mut definition);
    definition
}

/// Constraints are stored as a set: duplicates collapse.
pub fn dedup_constraints(definition: &mut Map<String, Value>) {
    if let Some(Value::Array(list)) = definition.get_mut("constraints") {
        let mut seen: Vec<Value> = Vec::new();
        list.retain(|c| {
            if seen.contains(c) {
                false
            } else {
                seen.push(c.clone());
                true
            }
        });
    }
}

/// Keeps only stored definition fields (Marathon ignores unknown input fields).
pub fn definition_fields(body: &Map<String, Value>) -> Map<String, Value> {
    body.iter()
        .filter(|(k, v)| DEFINITION_FIELDS.contains(&k.as_str()) && !v.is_null())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}
