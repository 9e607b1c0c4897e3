//! Marathon constraints: `[field, OPERATOR]` or `[field, OPERATOR, value]`, stored by Marathon
//! as a set. Pure helpers: berth's hostname pin, and the `field:OP:value` text form.

use std::collections::BTreeSet;
use std::fmt;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One constraint. Operators are kept as given; berth always writes upper-case ones because
/// Marathon's conversion needs the exact enum name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Constraint {
    pub field: String,
    pub operator: String,
    /// `None` only when never set: `["hostname","CLUSTER",""]` keeps its `""`.
    pub value: Option<String>,
}

impl Constraint {
    pub fn new(field: &str, operator: &str, value: Option<&str>) -> Self {
        Self {
            field: field.to_string(),
            operator: operator.to_string(),
            value: value.map(str::to_string),
        }
    }

    /// berth's pin: `["hostname","CLUSTER","<host>"]`, an exact equality on the offer hostname.
    pub fn hostname_cluster(host: &str) -> Self {
        Self::new("hostname", "CLUSTER", Some(host))
    }

    /// The same pin as a `LIKE`: LIKE is a full-string Java regex match, so the host is escaped
    /// entirely and matches only itself (`node-1.example.com` must not match `node-1Xexample`).
    pub fn hostname_like(host: &str) -> Self {
        Self::new("hostname", "LIKE", Some(&escape_java_regex(host)))
    }

    /// The host this constraint pins to exactly, if it is an exact hostname pin (CLUSTER with a
    /// value, or LIKE whose value is a fully escaped literal).
    pub fn pinned_host(&self) -> Option<String> {
        if self.field != "hostname" && self.field != "@hostname" {
            return None;
        }
        let value = self.value.as_deref().filter(|v| !v.is_empty())?;
        match self.operator.as_str() {
            "CLUSTER" => Some(value.to_string()),
            "LIKE" => unescape_literal_regex(value),
            _ => None,
        }
    }
}

const JAVA_REGEX_META: &[char] = &[
    '\\', '^', '$', '.', '|', '?', '*', '+', '(', ')', '[', ']', '{', '}',
];

/// Escapes every regex metacharacter (Java's set outside classes) with a backslash.
pub fn escape_java_regex(literal: &str) -> String {
    let mut out = String::with_capacity(literal.len() * 2);
    for c in literal.chars() {
        if JAVA_REGEX_META.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The literal a regex matches when it is only literal characters and escaped metacharacters.
fn unescape_literal_regex(regex: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = regex.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let escaped = chars.next()?;
            if !JAVA_REGEX_META.contains(&escaped) {
                return None;
            }
            out.push(escaped);
        } else if JAVA_REGEX_META.contains(&c) {
            return None;
        } else {
            out.push(c);
        }
    }
    Some(out)
}

impl Serialize for Constraint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut parts = vec![self.field.as_str(), self.operator.as_str()];
        if let Some(value) = &self.value {
            parts.push(value);
        }
        parts.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Constraint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let parts = Vec::<String>::deserialize(deserializer)?;
        match <[String; 2]>::try_from(parts) {
            Ok([field, operator]) => Ok(Self {
                field,
                operator,
                value: None,
            }),
            Err(parts) => match <[String; 3]>::try_from(parts) {
                Ok([field, operator, value]) => Ok(Self {
                    field,
                    operator,
                    value: Some(value),
                }),
                Err(parts) => Err(D::Error::custom(format!(
                    "a constraint has 2 or 3 strings, got {}",
                    parts.len()
                ))),
            },
        }
    }
}

/// A set of constraints: order is irrelevant and duplicates collapse, as in Marathon.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Constraints(BTreeSet<Constraint>);

impl Constraints {
    pub fn iter(&self) -> impl Iterator<Item = &Constraint> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, constraint: &Constraint) -> bool {
        self.0.contains(constraint)
    }

    pub fn insert(&mut self, constraint: Constraint) -> bool {
        self.0.insert(constraint)
    }

    pub fn remove(&mut self, constraint: &Constraint) -> bool {
        self.0.remove(constraint)
    }

    /// Hosts pinned exactly by hostname constraints (CLUSTER value or escaped LIKE).
    pub fn pinned_hosts(&self) -> Vec<String> {
        self.0.iter().filter_map(Constraint::pinned_host).collect()
    }

    /// Replaces every exact hostname pin with `pin`, keeping all other constraints.
    pub fn with_pin(&self, pin: Constraint) -> Constraints {
        let mut out: BTreeSet<Constraint> = self
            .0
            .iter()
            .filter(|c| c.pinned_host().is_none())
            .cloned()
            .collect();
        out.insert(pin);
        Constraints(out)
    }
}

impl FromIterator<Constraint> for Constraints {
    fn from_iter<I: IntoIterator<Item = Constraint>>(iter: I) -> Self {
        Constraints(iter.into_iter().collect())
    }
}

/// A malformed `field:OP[:value]` text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "constraint '{text}' is not field:OPERATOR[:value] ({reason}); escape ':' and ',' in values with a backslash"
)]
pub struct ConstraintTextError {
    pub text: String,
    pub reason: String,
}

/// Splits on `separator` not preceded by a backslash; `\<separator>` becomes the separator,
/// other backslashes stay (so regexes like `web\.example` survive), as DC/OS tooling does.
fn escaped_split(text: &str, separator: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek().copied()) {
            ('\\', Some(next)) if next == ':' || next == ',' => {
                chars.next();
                // Keep the escape for the later split on the other separator.
                if next != separator {
                    current.push('\\');
                }
                current.push(next);
            }
            (c, _) if c == separator => parts.push(std::mem::take(&mut current)),
            (c, _) => current.push(c),
        }
    }
    parts.push(current);
    parts
}

/// Parses the comma-separated `field:OPERATOR[:value]` text form into constraints; the
/// operator is upper-cased, parts are trimmed.
pub fn parse_constraints_text(text: &str) -> Result<Vec<Constraint>, ConstraintTextError> {
    let mut out = Vec::new();
    for item in escaped_split(text, ',') {
        if item.trim().is_empty() {
            continue;
        }
        let parts: Vec<String> = escaped_split(&item, ':')
            .into_iter()
            .map(|p| p.trim().to_string())
            .collect();
        let error = |reason: &str| ConstraintTextError {
            text: item.trim().to_string(),
            reason: reason.to_string(),
        };
        match parts.as_slice() {
            [field, op] | [field, op, _] if field.is_empty() || op.is_empty() => {
                return Err(error("empty field or operator"));
            }
            [field, op] => out.push(Constraint::new(field, &op.to_uppercase(), None)),
            [field, op, value] => out.push(Constraint::new(field, &op.to_uppercase(), Some(value))),
            _ => return Err(error("expected 2 or 3 parts")),
        }
    }
    Ok(out)
}

fn escape_text_part(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    for c in part.chars() {
        if c == ':' || c == ',' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Renders constraints in the text form that [`parse_constraints_text`] reads back.
pub fn render_constraints_text<'a>(constraints: impl IntoIterator<Item = &'a Constraint>) -> String {
    constraints
        .into_iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}",
            escape_text_part(&self.field),
            escape_text_part(&self.operator)
        )?;
        if let Some(value) = &self.value {
            write!(f, ":{}", escape_text_part(value))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn like_pin_escapes_every_metacharacter() {
        let pin = Constraint::hostname_like("node-1.example.com");
        assert_eq!(pin.value.as_deref(), Some(r"node-1\.example\.com"));
        assert_eq!(pin.pinned_host().as_deref(), Some("node-1.example.com"));
        let re = regex::Regex::new(&format!("^(?:{})$", pin.value.unwrap())).unwrap();
        assert!(re.is_match("node-1.example.com"));
        assert!(!re.is_match("node-1Xexample.com"));
    }

    #[test]
    fn recognises_only_exact_pins() {
        assert_eq!(
            Constraint::hostname_cluster("10.0.2.148")
                .pinned_host()
                .as_deref(),
            Some("10.0.2.148")
        );
        assert_eq!(
            Constraint::new("hostname", "LIKE", Some("srv2.*")).pinned_host(),
            None
        );
        assert_eq!(
            Constraint::new("hostname", "CLUSTER", Some("")).pinned_host(),
            None
        );
        assert_eq!(Constraint::new("rack", "CLUSTER", Some("r1")).pinned_host(), None);
        assert_eq!(Constraint::new("hostname", "UNIQUE", None).pinned_host(), None);
    }

    #[test]
    fn with_pin_replaces_the_old_pin_and_keeps_others() {
        let set: Constraints = [
            Constraint::hostname_cluster("a"),
            Constraint::new("rack", "GROUP_BY", None),
        ]
        .into_iter()
        .collect();
        let moved = set.with_pin(Constraint::hostname_cluster("b"));
        assert_eq!(moved.pinned_hosts(), ["b"]);
        assert!(moved.contains(&Constraint::new("rack", "GROUP_BY", None)));
        assert_eq!(moved.len(), 2);
    }

    #[test]
    fn parses_text_with_escapes() {
        let parsed =
            parse_constraints_text(r"hostname:LIKE:10.0.0.159|10.0.1.202, rack:group_by ,x:LIKE:a\:b\,c")
                .unwrap();
        assert_eq!(
            parsed,
            vec![
                Constraint::new("hostname", "LIKE", Some("10.0.0.159|10.0.1.202")),
                Constraint::new("rack", "GROUP_BY", None),
                Constraint::new("x", "LIKE", Some("a:b,c")),
            ]
        );
        assert!(parse_constraints_text("hostname").is_err());
        assert!(parse_constraints_text("a:b:c:d").is_err());
        assert_eq!(
            parse_constraints_text(r"hostname:LIKE:web\.example").unwrap()[0]
                .value
                .as_deref(),
            Some(r"web\.example")
        );
    }

    #[test]
    fn serde_is_the_array_form() {
        let c: Constraint = serde_json::from_str(r#"["hostname","CLUSTER",""]"#).unwrap();
        assert_eq!(c.value.as_deref(), Some(""));
        assert_eq!(serde_json::to_string(&c).unwrap(), r#"["hostname","CLUSTER",""]"#);
        assert!(serde_json::from_str::<Constraint>(r#"["hostname"]"#).is_err());
    }

    proptest! {
        #[test]
        fn text_form_round_trips(field in "[a-z@]{1,8}", op in "[A-Z_]{2,8}", value in proptest::option::of("[ -~]{1,20}")) {
            let value = value.map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
            let c = Constraint { field, operator: op, value };
            let text = render_constraints_text([&c]);
            prop_assert_eq!(parse_constraints_text(&text).unwrap(), vec![c]);
        }

        #[test]
        fn like_pin_matches_only_its_host(host in "[a-z0-9.\\-]{1,20}", other in "[a-z0-9.\\-]{1,20}") {
            let pin = Constraint::hostname_like(&host);
            let re = regex::Regex::new(&format!("^(?:{})$", pin.value.unwrap())).unwrap();
            prop_assert!(re.is_match(&host));
            prop_assert_eq!(re.is_match(&other), other == host);
        }
    }
}
