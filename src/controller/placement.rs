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
    /// Size of the filesystem holding the tenant roots (0 when the agent does not say).
    pub total_bytes: u64,
    /// Capacities berth already promised to volumes on this host (from their specs).
    pub promised_bytes: u64,
    /// What berth may still promise here: the free space, and no more than the host's size
    /// (times the overcommit ratio) less what is promised. See [`Candidate::with_promises`].
    pub room_bytes: u64,
    /// The host's Mesos attributes as its agent reports them; empty when the agent was not
    /// told them.
    pub attributes: BTreeMap<String, String>,
}

impl Candidate {
    /// The candidate with the capacities already promised on it, and what that leaves.
    pub fn with_promises(mut self, promised: u64, overcommit: f64) -> Self {
        self.promised_bytes = promised;
        self.room_bytes = if self.total_bytes == 0 {
            self.free_bytes // an agent that does not say its size
        } else {
            let ceiling = (self.total_bytes as f64 * overcommit) as u64;
            self.free_bytes.min(ceiling.saturating_sub(promised))
        };
        self
    }
}

/// What placement knows about an app's volumes. Each entry names its volume, so a conflict can
/// say which volumes disagree.
#[derive(Debug, Clone, Default)]
pub struct PlacementInput<'a> {
    /// (volume, host) for every volume whose data berth recorded on a host.
    pub recorded: Vec<(&'a str, &'a str)>,
    /// (volume, host) for every volume whose spec asks for a host.
    pub requested: Vec<(&'a str, &'a str)>,
    /// Hosts the app's tasks run on now (one entry per task).
    pub task_hosts: Vec<&'a str>,
    /// Bytes the app's volumes need together.
    pub capacity_bytes: u64,
    /// Hosts the app's volumes must not be placed on (`placement.avoidHosts`).
    pub avoid: Vec<&'a str>,
    /// Why the app's data cannot move to the host a volume asks for, when it cannot (the move
    /// itself is the migration's, see `controller::migration`).
    pub move_blocked: Option<String>,
}

/// Why a host was chosen: shown in events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlacementReason {
    Recorded,
    Requested,
    AppRunsThere,
    MostFreeSpace,
}

impl PlacementReason {
    /// Why, in words, for events.
    pub fn describe(self) -> &'static str {
        match self {
            PlacementReason::Recorded => "where the app's data already is",
            PlacementReason::Requested => "as spec.placement.host asks",
            PlacementReason::AppRunsThere => "where the app runs",
            PlacementReason::MostFreeSpace => {
                "the agent with the most free space that the app's constraints allow"
            }
        }
    }
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

/// Chooses the app's one host. `allowed` says whether the app's own constraints accept a
/// candidate.
pub fn place(
    input: &PlacementInput<'_>,
    candidates: &[Candidate],
    allowed: impl Fn(&Candidate) -> bool,
) -> Placement {
    // A volume whose data is on one host and whose spec asks for another.
    for (volume, requested) in &input.requested {
        if let Some((_, recorded)) = input.recorded.iter().find(|(v, h)| v == volume && h != requested) {
            let why = input
                .move_blocked
                .as_deref()
                .unwrap_or("another move of the app's data is under way");
            return Placement::Conflict(format!(
                "volume {volume}: spec.placement.host is {requested} but its data is on {recorded}, and berth \
                 cannot move it: {why}; set placement.host back to {recorded}, or fix that first"
            ));
        }
    }
    let recorded: BTreeSet<&str> = input.recorded.iter().map(|(_, h)| *h).collect();
    if recorded.len() > 1 {
        return Placement::Conflict(format!(
            "the app's volumes hold data on different hosts ({}); a task runs on one host, so the app cannot \
             mount them all: delete the volumes that should not be in this app",
            describe(&input.recorded)
        ));
    }
    let requested: BTreeSet<&str> = input.requested.iter().map(|(_, h)| *h).collect();
    if let Some(host) = recorded.iter().next() {
        if let Some((volume, other)) = input.requested.iter().find(|(_, h)| h != host) {
            return Placement::Conflict(format!(
                "volume {volume} asks for host {other}, but the app's data is on {host}; a task runs on one \
                 host: set its placement.host to {host} or remove it"
            ));
        }
        return Placement::Host {
            host: (*host).to_owned(),
            reason: PlacementReason::Recorded,
        };
    }
    if requested.len() > 1 {
        return Placement::Conflict(format!(
            "volumes of this app ask for different hosts ({}); a task runs on one host, so give them all \
             the same placement.host",
            describe(&input.requested)
        ));
    }
    let need = input.capacity_bytes;
    let short = |host: &str| {
        candidates
            .iter()
            .find(|c| c.host == host)
            .filter(|c| need > 0 && c.room_bytes < need)
    };
    if let Some(host) = requested.into_iter().next() {
        if let Some(c) = short(host) {
            return Placement::NoHost(format!(
                "spec.placement.host {host} has no room for spec.capacity {}: {}; lower spec.capacity, or \
                 remove spec.placement.host so that berth chooses a host",
                human_bytes(need),
                room(c)
            ));
        }
        return Placement::Host {
            host: host.to_owned(),
            reason: PlacementReason::Requested,
        };
    }
    if let Some(host) = most_common(&input.task_hosts).filter(|h| !input.avoid.contains(h)) {
        // Where the app runs, unless the volumes' capacities do not fit there: then where they
        // fit (the app's update moves its tasks).
        let fits = need == 0 || candidates.iter().any(|c| c.host == host && c.room_bytes >= need);
        if fits {
            return Placement::Host {
                host: host.to_owned(),
                reason: PlacementReason::AppRunsThere,
            };
        }
    }
    candidates
        .iter()
        .filter(|c| c.room_bytes >= need && allowed(c) && !input.avoid.contains(&c.host.as_str()))
        // Most free space first; the host name breaks ties so the choice is deterministic.
        .max_by(|a, b| a.free_bytes.cmp(&b.free_bytes).then_with(|| b.host.cmp(&a.host)))
        .map(|c| Placement::Host {
            host: c.host.clone(),
            reason: PlacementReason::MostFreeSpace,
        })
        .unwrap_or_else(|| Placement::NoHost(no_host(input.capacity_bytes, candidates, &allowed)))
}

/// Why no candidate fits, in words a user can act on.
fn no_host(needed: u64, candidates: &[Candidate], allowed: impl Fn(&Candidate) -> bool) -> String {
    if candidates.is_empty() {
        return "no berth agent answered; the platform team must check the agents".into();
    }
    let allowed_hosts: Vec<&Candidate> = candidates.iter().filter(|c| allowed(c)).collect();
    if allowed_hosts.is_empty() {
        return format!(
            "the app's constraints allow none of the {} hosts with a berth agent; check the app's constraints",
            candidates.len()
        );
    }
    let Some(best) = allowed_hosts.iter().max_by_key(|c| c.room_bytes) else {
        return "no host fits".into();
    };
    format!(
        "spec.capacity asks for {} but no host the app's constraints allow has room for it; the most is on {}: {}; \
         lower spec.capacity or ask the platform team for room",
        human_bytes(needed),
        best.host,
        room(best)
    )
}

/// A host's room, in words: free space, and the capacities promised there.
fn room(c: &Candidate) -> String {
    if c.total_bytes == 0 || c.promised_bytes == 0 {
        return format!("{} free", human_bytes(c.free_bytes));
    }
    format!(
        "{} free, {} of its {} promised to other volumes, {} left to promise",
        human_bytes(c.free_bytes),
        human_bytes(c.promised_bytes),
        human_bytes(c.total_bytes),
        human_bytes(c.room_bytes)
    )
}

/// Bytes in binary units, e.g. `10.0 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn describe(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(v, h)| format!("{v} on {h}"))
        .collect::<Vec<_>>()
        .join(", ")
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
            total_bytes: 0,
            promised_bytes: 0,
            room_bytes: free_bytes,
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
            recorded: vec![("t/a", "node-1")],
            task_hosts: vec!["node-2"],
            ..Default::default()
        };
        assert_eq!(
            host(place(&input, &agents(), |_| true)),
            ("node-1".into(), PlacementReason::Recorded)
        );
    }

    #[test]
    fn changing_the_requested_host_of_placed_data_is_a_conflict_that_names_the_volume() {
        let input = PlacementInput {
            recorded: vec![("t/a", "node-1"), ("t/b", "node-1")],
            requested: vec![("t/a", "node-2")],
            ..Default::default()
        };
        let Placement::Conflict(m) = place(&input, &agents(), |_| true) else {
            panic!()
        };
        assert!(
            m.contains("volume t/a") && m.contains("node-2") && m.contains("data is on node-1"),
            "{m}"
        );
        assert!(m.contains("set placement.host back to node-1"), "{m}");
    }

    #[test]
    fn an_explicit_host_wins_over_where_the_app_runs() {
        let input = PlacementInput {
            requested: vec![("t/a", "node-1")],
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
            recorded: vec![("t/a", "node-3")],
            ..Default::default()
        };
        assert_eq!(
            host(place(&input, &agents(), |_| true)),
            ("node-3".into(), PlacementReason::Recorded)
        );
        let new_volume_asks_elsewhere = PlacementInput {
            recorded: vec![("t/a", "node-3")],
            requested: vec![("t/b", "node-1")],
            ..Default::default()
        };
        let Placement::Conflict(m) = place(&new_volume_asks_elsewhere, &agents(), |_| true) else {
            panic!()
        };
        assert!(m.contains("volume t/b asks for host node-1"), "{m}");
    }

    #[test]
    fn disagreeing_volumes_are_a_conflict() {
        let input = PlacementInput {
            requested: vec![("t/a", "node-1"), ("t/b", "node-2")],
            ..Default::default()
        };
        let Placement::Conflict(m) = place(&input, &agents(), |_| true) else {
            panic!()
        };
        assert!(m.contains("t/a on node-1, t/b on node-2"), "{m}");
        let input = PlacementInput {
            recorded: vec![("t/a", "node-1"), ("t/b", "node-2")],
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
        let Placement::NoHost(m) = place(&too_big, &agents(), |_| true) else {
            panic!()
        };
        assert!(m.contains("301 B") && m.contains("300 B free"), "{m}");
        assert!(matches!(
            place(&input, &agents(), |h| h.host == "node-1"),
            Placement::NoHost(_)
        ));
    }

    /// A host of 1,000 bytes with `free` free and `promised` promised.
    fn sized(host: &str, free: u64, promised: u64, overcommit: f64) -> Candidate {
        Candidate {
            total_bytes: 1000,
            ..agent(host, free, &[])
        }
        .with_promises(promised, overcommit)
    }

    #[test]
    fn capacities_promised_on_a_host_count_even_when_its_disk_is_still_empty() {
        // node-1's disk is empty, but 900 of its 1,000 bytes are promised to volumes already
        // placed there: a volume of 200 goes to node-2, which has less free space but room.
        let hosts = vec![sized("node-1", 1000, 900, 1.0), sized("node-2", 600, 100, 1.0)];
        let input = PlacementInput {
            capacity_bytes: 200,
            ..Default::default()
        };
        assert_eq!(host(place(&input, &hosts, |_| true)).0, "node-2");
        // With 20% overcommit, node-1 may promise up to 1,200: room for 300, and it has the
        // most free space.
        let overcommitted = vec![sized("node-1", 1000, 900, 1.2), sized("node-2", 600, 100, 1.2)];
        assert_eq!(host(place(&input, &overcommitted, |_| true)).0, "node-1");
        // Never more than what is free, whatever the ratio.
        assert_eq!(sized("node-3", 50, 0, 3.0).room_bytes, 50);
        let full = vec![sized("node-1", 1000, 900, 1.0), sized("node-2", 600, 950, 1.0)];
        let Placement::NoHost(m) = place(&input, &full, |_| true) else {
            panic!()
        };
        assert!(
            m.contains("the most is on node-1: 1000 B free, 900 B of its 1000 B promised to other volumes, 100 B left to promise"),
            "{m}"
        );
    }

    #[test]
    fn a_requested_host_or_the_apps_host_must_have_room_for_the_capacity() {
        let hosts = vec![sized("node-1", 1000, 900, 1.0), sized("node-2", 600, 100, 1.0)];
        let requested = PlacementInput {
            requested: vec![("toto/data", "node-1")],
            capacity_bytes: 200,
            ..Default::default()
        };
        let Placement::NoHost(m) = place(&requested, &hosts, |_| true) else {
            panic!()
        };
        assert!(
            m.starts_with("spec.placement.host node-1 has no room for spec.capacity 200 B"),
            "{m}"
        );
        // Where the app runs has no room: where the volumes fit (the update moves the app).
        let runs = PlacementInput {
            task_hosts: vec!["node-1"],
            capacity_bytes: 200,
            ..Default::default()
        };
        assert_eq!(
            host(place(&runs, &hosts, |_| true)),
            ("node-2".into(), PlacementReason::MostFreeSpace)
        );
        // Without a capacity, the app's host as before.
        let runs_small = PlacementInput {
            task_hosts: vec!["node-1"],
            ..Default::default()
        };
        assert_eq!(host(place(&runs_small, &hosts, |_| true)).0, "node-1");
    }
}
