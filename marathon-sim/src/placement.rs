//! Constraint matching, as Marathon's `Constraints.meetsConstraint` does it for one offer.
//!
//! Differences from Marathon, by design of a simulator: agent attributes are configured as
//! text, so scalar normalisation (`0.###`) and range/set rendering are the configuration's job;
//! regexes use the `regex` crate anchored as `^(?:...)$` (Java's `String.matches` is a full match),
//! which lacks look-around and back-references, so such patterns are rejected at validation.

use std::collections::BTreeMap;

use regex::Regex;
use serde_json::Value;

/// One constraint as stored: `[field, operator]` or `[field, operator, value]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    pub field: String,
    pub operator: String,
    pub value: Option<String>,
}

impl Constraint {
    /// Reads a constraint array already accepted by validation.
    pub fn from_json(value: &Value) -> Option<Self> {
        let parts: Vec<&str> = value
            .as_array()?
            .iter()
            .map(|p| p.as_str())
            .collect::<Option<_>>()?;
        match parts.as_slice() {
            [field, operator] => Some(Self {
                field: field.to_string(),
                operator: operator.to_string(),
                value: None,
            }),
            [field, operator, value] => Some(Self {
                field: field.to_string(),
                operator: operator.to_string(),
                value: Some(value.to_string()),
            }),
            _ => None,
        }
    }
}

/// Compiles a Marathon LIKE/UNLIKE value as a full-string match, like Java's `String.matches`.
pub fn full_match_regex(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{pattern})$"))
}

/// What placement needs to know about an agent.
#[derive(Debug, Clone)]
pub struct Offer<'a> {
    pub hostname: &'a str,
    pub attributes: &'a BTreeMap<String, String>,
}

impl Offer<'_> {
    /// `hostname` and `@hostname` read the offer's hostname; anything else is an attribute.
    fn value_of(&self, field: &str) -> Option<String> {
        if field == "hostname" || field == "@hostname" {
            Some(self.hostname.to_string())
        } else {
            self.attributes.get(field).cloned()
        }
    }
}

/// True when `offer` may receive a new instance, given the already placed instances that count
/// (those of the current configuration: older ones are ignored during upgrades).
pub fn meets_constraint(constraint: &Constraint, offer: &Offer<'_>, placed: &[Offer<'_>]) -> bool {
    let value = constraint.value.as_deref().unwrap_or("");
    let Some(offer_value) = offer.value_of(&constraint.field) else {
        // A missing attribute satisfies only UNLIKE.
        return constraint.operator == "UNLIKE";
    };
    let placed_values: Vec<Option<String>> = placed.iter().map(|p| p.value_of(&constraint.field)).collect();
    match constraint.operator.as_str() {
        "LIKE" => !value.is_empty() && full_match_regex(value).is_ok_and(|re| re.is_match(&offer_value)),
        "UNLIKE" => !value.is_empty() && full_match_regex(value).is_ok_and(|re| !re.is_match(&offer_value)),
        "UNIQUE" => !placed_values
            .iter()
            .any(|v| v.as_deref() == Some(offer_value.as_str())),
        "CLUSTER" => {
            if value.is_empty() {
                // Without a value the first instance goes anywhere; the rest follow it.
                match placed_values.iter().flatten().next() {
                    Some(first) => *first == offer_value,
                    None => true,
                }
            } else {
                offer_value == value
            }
        }
        "IS" => offer_value == value,
        "MAX_PER" => {
            let max: usize = value.parse().unwrap_or(0);
            placed_values
                .iter()
                .filter(|v| v.as_deref() == Some(offer_value.as_str()))
                .count()
                < max
        }
        "GROUP_BY" => group_by_accepts(value, &offer_value, &placed_values),
        _ => false,
    }
}

/// Marathon's `checkGroupBy`: accept a value not yet used, or one of the smallest groups once at
/// least the expected number of groups exists.
fn group_by_accepts(value: &str, offer_value: &str, placed_values: &[Option<String>]) -> bool {
    let minimum_groups: usize = value.parse().unwrap_or(0);
    let mut groups: BTreeMap<&str, usize> = BTreeMap::new();
    for v in placed_values.iter().flatten() {
        *groups.entry(v.as_str()).or_default() += 1;
    }
    let smallest = groups.values().copied().min().unwrap_or(0);
    match groups.get(offer_value) {
        None => true,
        Some(count) => groups.len() >= minimum_groups && *count == smallest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(field: &str, op: &str, value: Option<&str>) -> Constraint {
        Constraint {
            field: field.into(),
            operator: op.into(),
            value: value.map(str::to_string),
        }
    }

    #[test]
    fn like_is_a_full_match() {
        let attrs = BTreeMap::new();
        let offer = Offer {
            hostname: "srv2.example.com",
            attributes: &attrs,
        };
        assert!(!meets_constraint(
            &c("hostname", "LIKE", Some("srv2")),
            &offer,
            &[]
        ));
        assert!(meets_constraint(
            &c("hostname", "LIKE", Some("srv2.*")),
            &offer,
            &[]
        ));
        assert!(meets_constraint(
            &c("hostname", "UNLIKE", Some("srv2")),
            &offer,
            &[]
        ));
    }

    #[test]
    fn group_by_spreads_evenly() {
        let a = BTreeMap::from([("rack".to_string(), "a".to_string())]);
        let b = BTreeMap::from([("rack".to_string(), "b".to_string())]);
        let on_a = Offer {
            hostname: "h1",
            attributes: &a,
        };
        let on_b = Offer {
            hostname: "h2",
            attributes: &b,
        };
        let rule = c("rack", "GROUP_BY", Some("2"));
        assert!(meets_constraint(&rule, &on_a, &[]));
        assert!(!meets_constraint(&rule, &on_a, std::slice::from_ref(&on_a)));
        assert!(meets_constraint(&rule, &on_b, std::slice::from_ref(&on_a)));
        assert!(meets_constraint(&rule, &on_a, &[on_a.clone(), on_b.clone()]));
    }
}
