//! The schema's checks on strings, as CEL rules (`x-kubernetes-validations`) that each say in
//! words what is wrong, instead of one `pattern` whose failure shows the raw regular expression.
//!
//! Servers that run CEL (Kubernetes 1.25 and later) refuse a bad value with these messages.
//! Older servers drop the rules; the controller's own check ([`crate::tenant`] through
//! [`super::validate`]) then refuses the same values with the same words in the volume's `Ready`
//! condition. A property test keeps the two in agreement. Every rule uses only `size`,
//! `startsWith`, `endsWith`, `contains`, `matches` and `string`, which every CEL-enabled
//! apiserver has, and its cost stays small because every string has a `maxLength`.

use schemars::{Schema, SchemaGenerator, json_schema};
use serde_json::{Value, json};

use crate::tenant::{MAX_COMPONENT_BYTES, MAX_PATH_BYTES, MAX_PATH_COMPONENTS};

/// A CEL rule and the message shown when it fails.
type Rule = (&'static str, &'static str);

/// A user path (`hostPath`, `containerPath`, `seed.copyFromHost`): `tenant::VolumePath::parse`.
pub const PATH_RULES: &[Rule] = &[
    (
        "self.size() > 0",
        "is empty: give an absolute path such as /var/lib/data",
    ),
    (
        "self.size() == 0 || self.startsWith('/')",
        "must be an absolute path starting with '/'",
    ),
    (
        "self.matches('^[ -~]*$')",
        "may contain only printable ASCII characters (no accented letters, tabs, newlines or other control characters)",
    ),
    (
        "!self.contains(':')",
        "must not contain ':' (it splits Docker's -v source:target:mode)",
    ),
    (
        "!self.contains(',')",
        "must not contain ',' (it splits Marathon's and Docker's option lists)",
    ),
    ("!self.contains('\\\\')", "must not contain a backslash"),
    (
        "!self.matches('(^|/)\\\\.\\\\.(/|$)')",
        "must not contain a '..' component",
    ),
    (
        "!self.matches('(^|/)\\\\.(/|$)')",
        "must not contain a '.' component",
    ),
    (
        "!self.matches('[^/]{256}')",
        "has a component longer than 255 bytes; the limit is 255",
    ),
    (
        "!self.matches('(^|/) | (/|$)')",
        "has a component that starts or ends with a space: such names are easy to mistake; remove the space",
    ),
    (
        "!self.matches('^(/+[^/]+){33}')",
        "has more than 32 components; the limit is 32",
    ),
    (
        "self.size() == 0 || self.matches('[^/]')",
        "must name a path below the root, not the root itself",
    ),
];

/// A Marathon app id: `tenant::MarathonAppId::parse`. Whether it lies inside the tenant's group
/// depends on the namespace, which CEL cannot see: the controller checks that.
pub const APP_RULES: &[Rule] = &[
    (
        "self.startsWith('/')",
        "must be an absolute Marathon app id starting with '/', e.g. /toto/web",
    ),
    ("self != '/'", "must name an app, not the root group"),
    (
        "self.matches('^[a-z0-9./-]*$')",
        "may contain only lower-case letters (a-z), digits, '-', '.' and '/'",
    ),
    (
        "self == '/' || (!self.contains('//') && !self.endsWith('/'))",
        "must not have an empty segment ('//' or a trailing '/')",
    ),
    (
        "!self.matches('(^|/)\\\\.\\\\.?(/|$)')",
        "must not have '.' or '..' segments",
    ),
    (
        "!self.matches('(^|/)-|-(/|$)')",
        "segments must not start or end with '-'",
    ),
    (
        "self.matches('(^|/)\\\\.\\\\.?(/|$)') || !self.matches('(^|/)\\\\.|\\\\.(/|$)|\\\\.\\\\.|\\\\.-|-\\\\.')",
        "dots must separate DNS-style labels: no '..', and no '.' at either end of a segment or next to '-'",
    ),
    (
        "!self.matches('/(restart|tasks|versions)$')",
        "the last segment may not be 'restart', 'tasks' or 'versions' (Marathon's own sub-resources)",
    ),
];

/// A host name as Mesos reports it: `validate::is_hostname`.
pub const HOST_RULES: &[Rule] = &[(
    "self.matches('^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$')",
    "must be a host name or IP address as Mesos reports it: letters, digits, '.' and '-', starting and ending with a letter or digit, e.g. node-3",
)];

/// Permission bits, a string or (written unquoted in YAML) a number: `validate::parse_mode`.
pub const PERMISSION_RULES: &[Rule] = &[
    (
        "string(self) == self",
        "is a number: write permissions as a quoted string such as \"0755\" (YAML reads an unquoted 0755 as the number 493)",
    ),
    (
        "string(self) != self || self.matches('^0?[0-7]{3}$')",
        "must be three octal digits, optionally after a 0, such as \"0640\" (no setuid, setgid or sticky bits)",
    ),
];

/// Longest Marathon app id the schema accepts.
pub const MAX_APP_ID_BYTES: usize = 512;
/// Longest host name (DNS).
pub const MAX_HOST_BYTES: usize = 253;

fn validations(rules: &[Rule]) -> Value {
    rules
        .iter()
        .map(|(rule, message)| json!({"rule": rule, "message": message}))
        .collect()
}

fn string_with(rules: &[Rule], max_length: usize) -> Schema {
    json_schema!({
        "type": "string",
        "maxLength": max_length,
        "x-kubernetes-validations": validations(rules),
    })
}

/// Schema of a user path.
pub fn volume_path(_: &mut SchemaGenerator) -> Schema {
    // Kept in step with the Rust limits the rules spell out.
    const _: () = assert!(MAX_COMPONENT_BYTES == 255 && MAX_PATH_COMPONENTS == 32);
    string_with(PATH_RULES, MAX_PATH_BYTES - 1)
}

/// Schema of a Marathon app id.
pub fn app_id(_: &mut SchemaGenerator) -> Schema {
    string_with(APP_RULES, MAX_APP_ID_BYTES)
}

/// Schema of a host name.
pub fn host_name(_: &mut SchemaGenerator) -> Schema {
    string_with(HOST_RULES, MAX_HOST_BYTES)
}

/// Schema of a duration such as `10m` or `1h30m` (`hostLoss.after`).
pub fn duration(_: &mut SchemaGenerator) -> Schema {
    string_with(
        &[(
            "self.matches('^([0-9]+(ms|s|m|h))+$')",
            "must be a duration such as 10m or 1h30m",
        )],
        32,
    )
}

/// Schema of a list of host names (`placement.avoidHosts`).
pub fn host_names(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "maxItems": 32,
        "items": {
            "type": "string",
            "maxLength": MAX_HOST_BYTES,
            "x-kubernetes-validations": validations(HOST_RULES),
        },
    })
}

/// Schema of permission bits: an int-or-string, so that an unquoted `0755` reaches the rules (and
/// the controller) and gets a message that says how to write it.
pub fn permissions(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-int-or-string": true,
        "maxLength": 4,
        "x-kubernetes-validations": validations(PERMISSION_RULES),
    })
}

/// Drops every `nullable` from a schema. Kubernetes publishes a CRD's schema as OpenAPI v2,
/// which has no `nullable`, by removing the type and properties of every nullable field, so
/// `kubectl explain` showed `owner`, `placement`, `seed` or `status` with no fields. berth never
/// writes `null` (empty optional fields are left out), so nothing needs it.
pub fn drop_nullable(schema: &mut Value) {
    let Some(node) = schema.as_object_mut() else {
        return;
    };
    node.remove("nullable");
    if let Some(Value::Object(properties)) = node.get_mut("properties") {
        properties.values_mut().for_each(drop_nullable);
    }
    for key in ["items", "additionalProperties", "not"] {
        if let Some(child) = node.get_mut(key) {
            drop_nullable(child);
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(branches)) = node.get_mut(key) {
            branches.iter_mut().for_each(drop_nullable);
        }
    }
}

#[cfg(test)]
mod tests;
