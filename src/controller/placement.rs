//! Which host a volume lives on (pure).
//!
//! Placement is sticky: once a host is recorded in a volume's status it never changes by itself.
//! All volumes of one app share one host, because a Marathon task runs on one host. Without a
//! recorded or requested host berth prefers the host where the app already runs (its data is
//! probably there), then the agent with the most free space that fits the app's volumes and
//! satisfies the app's constraints on the hostname and on the Mesos attributes the agent reports.

use std::collections::{BTreeMap, BTreeSet};

/// An agent that could hold the volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub host: String,
    pub free_bytes: u64,
    /// The host's Mesos attributes as its agent reports them; empty when the agent was not
    /// told them.
    pub attributes: BTreeMap<String, String>,
}

/// What placement knows about a volume and its app.
#[derive(Debug, Clone, Default)]
pub struct PlacementInput<'a> {
    /// The host in this volume's status, if it was placed before.
    pub recorded: Option<&'a str>,
    /// The host this volume's spec asks for.
    pub requested: Option<&'a str>,
    /// Hosts recorded in the status of the app's other volumes.
    pub siblings_recorded: BTreeSet<&'a str>,
    /// Hosts the app's other volumes ask for.
    pub siblings_requested: BTreeSet<&'a str>,
    /// Hosts the app's tasks run on now (one entry per task).
    pub task_hosts: Vec<&'a str>,
    /// Bytes the app's volumes need together.
    pub capacity_bytes: u64,
}

/// Why a host was chosen: shown in events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlacementReason {
    Recorded,
    Requested,
    SharedWithApp,
    AppRunsThere,
    MostFreeSpace,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    Host {
        host: String,
        reason: PlacementReason,
    },
    /// Volumes of one app disagree on the host; nothing may change until the user fixes it.
    Conflict(String),
    /// No agent fits.
    NoHost(String),
}

/// Chooses the host. `allowed` says whether the app's own constraints accept a candidate.
pub fn place(
    input: &PlacementInput<'_>,
    candidates: &[Candidate],
    allowed: impl Fn(&Candidate) -> bool,
) -> Placement {
    if let Some(recorded) = input.recorded {
        if let Some(requested) = input.requested.filter(|r| *r != recorded) {
            return Placement::Conflict(format!(
                "spec.placement.host is {requested} but the data is on {recorded}; berth does not move data \
                 between hosts: set placement.host back to {recorded}, or create a new volume"
            ));
        }
        if let Some(other) = input.siblings_recorded.iter().find(|h| **h != recorded) {
            return Placement::Conflict(format!(
                "this volume's data is on {recorded} but another volume of the same app is on {other}; \
                 a task runs on one host, so the app cannot mount both"
            ));
        }
        return Placement::Host {
            host: recorded.to_owned(),
            reason: PlacementReason::Recorded,
        };
    }
    let wanted: BTreeSet<&str> = input
        .siblings_recorded
        .iter()
        .chain(input.siblings_requested.iter())
        .chain(input.requested.iter())
        .copied()
        .collect();
    if wanted.len() > 1 {
        let list: Vec<_> = wanted.into_iter().collect();
        return Placement::Conflict(format!(
            "volumes of this app ask for different hosts ({}); a task runs on one host, so give them all \
             the same placement.host",
            list.join(", ")
        ));
    }
    if let Some(host) = wanted.into_iter().next() {
        let reason = if input.requested == Some(host) {
            PlacementReason::Requested
        } else {
            PlacementReason::SharedWithApp
        };
        return Placement::Host {
            host: host.to_owned(),
            reason,
        };
    }
    if let Some(host) = most_common(&input.task_hosts) {
        return Placement::Host {
            host: host.to_owned(),
            reason: PlacementReason::AppRunsThere,
        };
    }
    candidates
        .iter()
        .filter(|c| c.free_bytes >= input.capacity_bytes && allowed(c))
        // Most free space first; the host name breaks ties so the choice is deterministic.
        .max_by(|a, b| a.free_bytes.cmp(&b.free_bytes).then_with(|| b.host.cmp(&a.host)))
        .map(|c| Placement::Host {
            host: c.host.clone(),
            reason: PlacementReason::MostFreeSpace,
        })
        .unwrap_or_else(|| {
            Placement::NoHost(format!(
                "none of the {} known agents has {} bytes free and satisfies the app's constraints",
                candidates.len(),
                input.capacity_bytes
            ))
        })
}

/// Whether the app's own constraints accept `c` as the one host for all its tasks, judged as
/// Marathon judges an offer (`marathon-api.md`): LIKE and UNLIKE are full matches, CLUSTER and IS
/// with a value are equality, and an attribute the host lacks fails every operator but UNLIKE.
/// Operators that spread tasks (UNIQUE, GROUP_BY, MAX_PER) say nothing about a single host. An
/// agent that reports no attributes at all was not told them: its attribute constraints are left
/// to Marathon rather than guessed.
pub fn constraints_allow(constraints: &[(String, String, Option<String>)], c: &Candidate) -> bool {
    constraints.iter().all(|(field, op, value)| {
        let offered = match field.as_str() {
            "hostname" | "@hostname" => Some(c.host.as_str()),
            _ if c.attributes.is_empty() => return true,
            // Fault-domain fields come from Mesos, not from attributes, unless the agent says.
            "@region" | "@zone" if !c.attributes.contains_key(field) => return true,
            _ => c.attributes.get(field).map(String::as_str),
        };
        let Some(offered) = offered else {
            return op == "UNLIKE";
        };
        let value = value.as_deref().unwrap_or("");
        let full_match = || regex::Regex::new(&format!("^(?:{value})$")).is_ok_and(|r| r.is_match(offered));
        match op.as_str() {
            "LIKE" => full_match(),
            "UNLIKE" => !full_match(),
            "CLUSTER" if !value.is_empty() => value == offered,
            "IS" if !value.is_empty() => {
                crate::agent::attributes::scalar(value)
                    .as_deref()
                    .unwrap_or(value)
                    == offered
            }
            _ => true,
        }
    })
}

fn most_common<'a>(hosts: &[&'a str]) -> Option<&'a str> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for h in hosts {
        *counts.entry(h).or_default() += 1;
    }
    // max_by_key keeps the last maximum; iterate in reverse name order so ties go to the first name.
    counts.into_iter().rev().max_by_key(|(_, n)| *n).map(|(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(host: &str, free_bytes: u64, attributes: &[(&str, &str)]) -> Candidate {
        Candidate {
            host: host.into(),
            free_bytes,
            attributes: attributes
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn agents() -> Vec<Candidate> {
        vec![
            agent("node-1", 100, &[]),
            agent("node-2", 300, &[]),
            agent("node-3", 300, &[]),
        ]
    }

    fn host(p: Placement) -> (String, PlacementReason) {
        match p {
            Placement::Host { host, reason } => (host, reason),
            other => panic!("expected a host, got {other:?}"),
        }
    }

    fn c(field: &str, op: &str, v: &str) -> Vec<(String, String, Option<String>)> {
        vec![(field.to_owned(), op.to_owned(), Some(v.to_owned()))]
    }

    #[test]
    fn hostname_constraints_are_full_matches() {
        let n1 = agent("node-1", 1, &[]);
        assert!(constraints_allow(&c("hostname", "LIKE", "node-[12]"), &n1));
        assert!(
            !constraints_allow(&c("hostname", "LIKE", "node"), &n1),
            "LIKE is a full-string match"
        );
        assert!(!constraints_allow(&c("hostname", "UNLIKE", "node-1"), &n1));
        assert!(constraints_allow(&c("hostname", "UNLIKE", "node"), &n1));
        assert!(constraints_allow(&c("hostname", "CLUSTER", "node-1"), &n1));
        assert!(!constraints_allow(&c("@hostname", "CLUSTER", "node-2"), &n1));
        assert!(constraints_allow(&c("hostname", "CLUSTER", ""), &n1));
        assert!(constraints_allow(&c("hostname", "UNIQUE", ""), &n1));
    }

    #[test]
    fn attribute_constraints_are_judged_where_the_agent_reports_attributes() {
        let r1 = agent("node-1", 1, &[("rack", "r1"), ("cpus", "2.5")]);
        assert!(constraints_allow(&c("rack", "CLUSTER", "r1"), &r1));
        assert!(!constraints_allow(&c("rack", "CLUSTER", "r2"), &r1));
        assert!(constraints_allow(&c("rack", "IS", "r1"), &r1));
        assert!(
            constraints_allow(&c("cpus", "IS", "2.50"), &r1),
            "IS normalises scalars"
        );
        assert!(
            !constraints_allow(&c("cpus", "CLUSTER", "2.50"), &r1),
            "CLUSTER does not"
        );
        assert!(constraints_allow(&c("rack", "LIKE", "r[0-9]"), &r1));
        assert!(!constraints_allow(&c("rack", "LIKE", "r"), &r1));
        assert!(constraints_allow(&c("cpus", "LIKE", "2\\.5"), &r1));
        assert!(constraints_allow(&c("rack", "GROUP_BY", ""), &r1));
        // A lacking attribute passes UNLIKE only, as in Marathon.
        for op in ["CLUSTER", "LIKE", "IS", "UNIQUE", "GROUP_BY", "MAX_PER"] {
            assert!(!constraints_allow(&c("zone", op, "a"), &r1), "{op}");
        }
        assert!(constraints_allow(&c("zone", "UNLIKE", "a"), &r1));
        // An agent that was not told its attributes is not judged on them.
        assert!(constraints_allow(
            &c("rack", "CLUSTER", "r2"),
            &agent("node-2", 1, &[])
        ));
        assert!(constraints_allow(&c("@zone", "CLUSTER", "a"), &r1));
    }

    #[test]
    fn placement_skips_hosts_in_the_wrong_rack() {
        let hosts = vec![
            agent("node-1", 500, &[("rack", "r1")]),
            agent("node-2", 100, &[("rack", "r2")]),
        ];
        let wants_r2 = c("rack", "CLUSTER", "r2");
        let p = place(&PlacementInput::default(), &hosts, |h| {
            constraints_allow(&wants_r2, h)
        });
        assert_eq!(host(p), ("node-2".into(), PlacementReason::MostFreeSpace));
    }

    #[test]
    fn a_recorded_host_is_sticky() {
        let input = PlacementInput {
            recorded: Some("node-1"),
            task_hosts: vec!["node-2"],
            ..Default::default()
        };
        assert_eq!(
            host(place(&input, &agents(), |_| true)),
            ("node-1".into(), PlacementReason::Recorded)
        );
    }

    #[test]
    fn changing_the_requested_host_of_placed_data_is_a_conflict() {
        let input = PlacementInput {
            recorded: Some("node-1"),
            requested: Some("node-2"),
            ..Default::default()
        };
        assert!(matches!(place(&input, &agents(), |_| true), Placement::Conflict(m) if m.contains("node-2")));
    }

    #[test]
    fn an_explicit_host_wins_over_where_the_app_runs() {
        let input = PlacementInput {
            requested: Some("node-1"),
            task_hosts: vec!["node-2"],
            ..Default::default()
        };
        assert_eq!(
            host(place(&input, &agents(), |_| true)),
            ("node-1".into(), PlacementReason::Requested)
        );
    }

    #[test]
    fn volumes_of_one_app_share_a_host() {
        let input = PlacementInput {
            siblings_recorded: ["node-3"].into(),
            ..Default::default()
        };
        assert_eq!(
            host(place(&input, &agents(), |_| true)),
            ("node-3".into(), PlacementReason::SharedWithApp)
        );
    }

    #[test]
    fn disagreeing_volumes_are_a_conflict() {
        let input = PlacementInput {
            requested: Some("node-1"),
            siblings_requested: ["node-2"].into(),
            ..Default::default()
        };
        let Placement::Conflict(m) = place(&input, &agents(), |_| true) else {
            panic!()
        };
        assert!(m.contains("node-1, node-2"), "{m}");
        let input = PlacementInput {
            recorded: Some("node-1"),
            siblings_recorded: ["node-2"].into(),
            ..Default::default()
        };
        assert!(matches!(
            place(&input, &agents(), |_| true),
            Placement::Conflict(_)
        ));
    }

    #[test]
    fn the_host_where_the_app_runs_adopts_its_data() {
        let input = PlacementInput {
            task_hosts: vec!["node-2", "node-1", "node-1"],
            ..Default::default()
        };
        assert_eq!(
            host(place(&input, &agents(), |_| true)),
            ("node-1".into(), PlacementReason::AppRunsThere)
        );
        let tie = PlacementInput {
            task_hosts: vec!["node-2", "node-1"],
            ..Default::default()
        };
        assert_eq!(host(place(&tie, &agents(), |_| true)).0, "node-1");
    }

    #[test]
    fn otherwise_the_most_free_space_that_fits_and_is_allowed() {
        let input = PlacementInput {
            capacity_bytes: 200,
            ..Default::default()
        };
        // node-2 and node-3 tie on space: the first name wins.
        assert_eq!(
            host(place(&input, &agents(), |_| true)),
            ("node-2".into(), PlacementReason::MostFreeSpace)
        );
        assert_eq!(host(place(&input, &agents(), |h| h.host != "node-2")).0, "node-3");
        let too_big = PlacementInput {
            capacity_bytes: 301,
            ..Default::default()
        };
        assert!(matches!(
            place(&too_big, &agents(), |_| true),
            Placement::NoHost(_)
        ));
        assert!(matches!(
            place(&input, &agents(), |h| h.host == "node-1"),
            Placement::NoHost(_)
        ));
    }
}
