//! What the commands show while they wait, and when a wait is over, without I/O.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use super::plan::{bound_host, is_deleting, key, migration};
use crate::crd::{MigrationStatus, StatefulLocalVolume};

/// Where the volumes should end up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// On this host (`berth migrate --to`).
    On(&'a str),
    /// On any host but this one (`berth drain`).
    AwayFrom(&'a str),
}

/// Where one volume stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumeState {
    Waiting,
    /// At the target, no move under way, Ready=True.
    Done,
    /// Stalled=True: the controller needs a person; the condition's message says why.
    Stalled(String),
}

/// Where a set of volumes stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaitState {
    Waiting,
    Done,
    /// (volume, message) of each stalled volume.
    Stalled(Vec<(String, String)>),
}

/// Whether a status (or condition) written for `observed` describes `generation` of the spec:
/// right after a patch the status still describes the spec before it.
fn is_current(observed: Option<i64>, generation: Option<i64>) -> bool {
    match (observed, generation) {
        (Some(o), Some(g)) => o >= g,
        _ => true,
    }
}

fn condition<'a>(v: &'a StatefulLocalVolume, type_: &str) -> Option<&'a Condition> {
    let status = v.status.as_ref()?;
    let c = status.conditions.iter().find(|c| c.type_ == type_)?;
    is_current(c.observed_generation, v.metadata.generation).then_some(c)
}

/// Where `v` stands with respect to `target`.
pub fn volume_state(v: &StatefulLocalVolume, target: Target<'_>) -> VolumeState {
    let Some(status) = &v.status else {
        return VolumeState::Waiting;
    };
    if !is_current(status.observed_generation, v.metadata.generation) {
        return VolumeState::Waiting;
    }
    if let Some(c) = condition(v, "Stalled").filter(|c| c.status == "True") {
        return VolumeState::Stalled(c.message.clone());
    }
    let placed = match (target, status.host.as_deref()) {
        (Target::On(want), Some(host)) => host == want,
        (Target::AwayFrom(old), Some(host)) => host != old,
        (_, None) => false,
    };
    let ready = condition(v, "Ready").is_some_and(|c| c.status == "True");
    if placed && status.migration.is_none() && ready {
        VolumeState::Done
    } else {
        VolumeState::Waiting
    }
}

/// Where `volumes` stand together: done when each is, stalled when any is.
pub fn wait_state<'a>(
    volumes: impl IntoIterator<Item = &'a StatefulLocalVolume>,
    target: Target<'_>,
) -> WaitState {
    let mut done = true;
    let mut stalled = Vec::new();
    for v in volumes {
        match volume_state(v, target) {
            VolumeState::Done => {}
            VolumeState::Waiting => done = false,
            VolumeState::Stalled(message) => stalled.push((key(v), message)),
        }
    }
    match (stalled.is_empty(), done) {
        (false, _) => WaitState::Stalled(stalled),
        (true, true) => WaitState::Done,
        (true, false) => WaitState::Waiting,
    }
}

/// Bytes as Kubernetes quantities are usually read: `512B`, `412Mi`, `1.0Gi` (one decimal below 10).
pub fn human_bytes(n: i64) -> String {
    const UNITS: [&str; 6] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    if n < 1024 {
        return format!("{n}B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value < 10.0 {
        format!("{value:.1}{}", UNITS[unit])
    } else {
        format!("{value:.0}{}", UNITS[unit])
    }
}

/// What a move's copy has done: the controller's `progress`, else made from the counters.
pub fn copy_progress(m: &MigrationStatus) -> Option<String> {
    if let Some(p) = m.progress.as_ref().filter(|p| !p.is_empty()) {
        return Some(p.clone());
    }
    let bytes = match (m.bytes_done, m.bytes_total) {
        (Some(d), Some(t)) => Some(format!("{} of {}", human_bytes(d), human_bytes(t))),
        (Some(d), None) => Some(human_bytes(d)),
        _ => None,
    };
    let files = match (m.files_done, m.files_total) {
        (Some(d), Some(t)) => Some(format!("{d} of {t} files")),
        (Some(d), None) => Some(format!("{d} files")),
        _ => None,
    };
    let parts: Vec<String> = bytes.into_iter().chain(files).collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// One line about `v`: `toto/db  Copying  412Mi of 1.0Gi, 1200 of 3000 files  node-1 → node-2`
/// while it moves, `toto/db  Bound  ready  node-2` otherwise, followed by what a move waits for
/// before it starts.
pub fn progress_line(v: &StatefulLocalVolume) -> String {
    let mut parts = vec![key(v)];
    if is_deleting(v) {
        parts.push("being deleted".into());
    }
    match migration(v) {
        Some(m) => {
            parts.push(m.step.as_str().to_owned());
            parts.extend(copy_progress(m));
            parts.push(format!("{} → {}", m.from, m.to));
            if m.pass > 1 {
                parts.push(format!("pass {}", m.pass));
            }
            parts.extend(m.message.clone().filter(|s| !s.is_empty()));
        }
        None => {
            let ready = v.status.as_ref().and_then(|s| s.ready());
            let phase = v.status.as_ref().and_then(|s| s.phase).map(|p| p.as_str());
            let reason = ready.map(|c| c.reason.as_str()).or(phase).unwrap_or("NoStatus");
            parts.push(reason.to_owned());
            let is_ready = ready.is_some_and(|c| c.status == "True");
            parts.push(if is_ready { "ready" } else { "not ready" }.into());
            parts.push(bound_host(v).unwrap_or("not bound").to_owned());
            // A move that has not started says what it waits for.
            if let Some(c) = condition(v, "Reconciling").filter(|c| c.reason == "MoveWaiting") {
                parts.push(c.message.clone());
            }
        }
    }
    parts.join("  ")
}

/// The last line shown for each volume, so that a line is printed only when it changes.
#[derive(Debug, Default)]
pub struct Lines {
    last: BTreeMap<String, String>,
}

impl Lines {
    /// `v`'s line, when it differs from the last one shown for `v`.
    pub fn changed(&mut self, v: &StatefulLocalVolume) -> Option<String> {
        let line = progress_line(v);
        if self.last.get(&key(v)) == Some(&line) {
            return None;
        }
        self.last.insert(key(v), line.clone());
        Some(line)
    }
}

/// A duration as the summaries print it: `14.2s`, `3m12s`, `1h05m`.
pub fn elapsed(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 60 {
        format!("{:.1}s", d.as_secs_f64())
    } else if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h{:02}m", secs / 3600, secs % 3600 / 60)
    }
}

/// `1 volume`, `2 volumes`.
pub fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

#[cfg(test)]
mod tests;
