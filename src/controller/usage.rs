//! What a volume holds and how its capacity is held, as its status shows them (`status.usage`),
//! and when that is worth a write. Pure decisions: the verifier and the passes feed them what
//! the agents answered.
//!
//! A measurement changes with every byte a tenant writes; a status write for each would make a
//! steady state noisy and the apiserver busy. So a new figure is written only when it moved by a
//! step worth showing (1% of the capacity; without a capacity, a tenth of what it was or 64Mi,
//! whichever is more), or when it crossed the warning threshold.

use crate::{
    agent::api::{EntryType, LimitState, UsageReport, VolumeState},
    crd::{LimitMode, VolumeUsage},
};

const MIB: u64 = 1 << 20;

/// What berth learnt of a volume from its host's agent since the status was written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Learnt {
    /// How the agent holds the volume to its capacity (from an ensure).
    pub limit: Option<LimitState>,
    /// The agent's last measurement.
    pub measured: Option<UsageReport>,
    /// An ensure made the volume empty ([`made_empty`]) and nothing was measured since.
    pub created: bool,
    /// The agent marked the data with the volume's identity.
    pub marked: bool,
}

/// The agent's ensure made the volume and it held nothing then: a new directory, or a new file
/// with no seed (a seeded file waits for a measurement instead of showing 0).
pub fn made_empty(state: &VolumeState) -> bool {
    state.created && (state.entry_type == EntryType::Directory || state.size_bytes == 0)
}

/// The usage section the status should carry: `previous` with what was learnt, where it is
/// worth showing.
pub fn next(
    previous: Option<&VolumeUsage>,
    capacity: Option<u64>,
    learnt: &Learnt,
    warn_ratio: f64,
) -> Option<VolumeUsage> {
    let mut u = previous.cloned().unwrap_or_default();
    match (capacity, &learnt.limit) {
        (None, _) => {
            u.limit = None;
            u.limit_message = None;
        }
        (Some(_), Some(l)) => {
            u.limit = Some(if l.enforced {
                LimitMode::Enforced
            } else {
                LimitMode::Advisory
            });
            u.limit_message = l.reason.clone();
        }
        (Some(_), None) => {}
    }
    let measured = learnt
        .measured
        .as_ref()
        .filter(|m| m.error.is_none())
        .and_then(|m| Some((m.used_bytes?, m)));
    match (measured, u.used_bytes) {
        (Some((bytes, m)), old)
            if old.is_none_or(|old| worth_writing(old as u64, bytes, capacity, warn_ratio)) =>
        {
            u.used_bytes = Some(bytes as i64);
            u.used = Some(human_bytes(bytes));
            u.used_inodes = m.used_inodes.map(|n| n as i64);
            u.measured_at = m.measured_at.clone();
        }
        (None, None) if learnt.created => {
            u.used_bytes = Some(0);
            u.used = Some("0".to_owned());
        }
        _ => {}
    }
    u.used_percent = match (u.used_bytes, capacity) {
        (Some(used), Some(c)) if c > 0 => {
            Some(((used as u64).saturating_mul(100) / c).min(i32::MAX as u64) as i32)
        }
        _ => None,
    };
    (u != VolumeUsage::default()).then_some(u)
}

/// Whether a new figure differs enough from the one shown to be written.
pub fn worth_writing(shown: u64, now: u64, capacity: Option<u64>, warn_ratio: f64) -> bool {
    if let Some(c) = capacity
        && nearly_full(shown, c, warn_ratio) != nearly_full(now, c, warn_ratio)
    {
        return true;
    }
    let step = match capacity {
        Some(c) => (c / 100).max(MIB),
        None => (shown / 10).max(64 * MIB),
    };
    shown.abs_diff(now) >= step
}

/// Whether `used` passed the warning share of `capacity`.
pub fn nearly_full(used: u64, capacity: u64, warn_ratio: f64) -> bool {
    capacity > 0 && used as f64 >= capacity as f64 * warn_ratio
}

/// The warning when a volume passed its threshold in this write (not on every write after).
pub fn nearly_full_note(
    previous: Option<&VolumeUsage>,
    next: Option<&VolumeUsage>,
    capacity: Option<u64>,
    warn_ratio: f64,
) -> Option<String> {
    let capacity = capacity?;
    let used = |u: Option<&VolumeUsage>| u.and_then(|u| u.used_bytes).map(|b| b as u64);
    let now = used(next)?;
    let was = used(previous).is_some_and(|b| nearly_full(b, capacity, warn_ratio));
    (!was && nearly_full(now, capacity, warn_ratio)).then(|| {
        let enforced = next.and_then(|u| u.limit) == Some(LimitMode::Enforced);
        format!(
            "holds {} of its {} capacity ({}%); {}",
            human_bytes(now),
            human_bytes(capacity),
            now.saturating_mul(100) / capacity,
            if enforced {
                "writes past the capacity will fail: raise spec.capacity or remove data"
            } else {
                "the capacity is advisory on this host, so the host's disk is the real limit: raise spec.capacity or remove data"
            }
        )
    })
}

/// Bytes in the units `kubectl` shows for quantities: `0`, `512`, `1.5Ki`, `812Mi`, `12Gi`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    if n < 1024 {
        return n.to_string();
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value < 9.95 {
        let tenths = (value * 10.0).round() / 10.0;
        if tenths.fract() == 0.0 {
            format!("{tenths:.0}{}", UNITS[unit])
        } else {
            format!("{tenths:.1}{}", UNITS[unit])
        }
    } else {
        format!("{:.0}{}", value.round(), UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::api::{QuotaKind, UsageSource};

    const GIB: u64 = 1 << 30;

    fn measured(bytes: u64) -> UsageReport {
        UsageReport {
            tenant: "toto".into(),
            host_path: "/data".into(),
            used_bytes: Some(bytes),
            used_inodes: Some(12),
            limit_bytes: None,
            source: Some(UsageSource::Quota),
            measured_at: Some("2026-11-30T12:00:00Z".into()),
            nested_subvolumes: 0,
            partial: false,
            error: None,
        }
    }

    fn limit(enforced: bool) -> LimitState {
        LimitState {
            kind: if enforced {
                QuotaKind::BtrfsQgroup
            } else {
                QuotaKind::None
            },
            requested_bytes: 10 * GIB,
            bytes: enforced.then_some(10 * GIB),
            enforced,
            reason: (!enforced).then(|| "this host's filesystem (ext4) cannot limit a directory".to_owned()),
        }
    }

    #[test]
    fn kubectl_units() {
        assert_eq!(human_bytes(0), "0");
        assert_eq!(human_bytes(512), "512");
        assert_eq!(human_bytes(1536), "1.5Ki");
        assert_eq!(human_bytes(812 * MIB + 5), "812Mi");
        assert_eq!(human_bytes(GIB + GIB / 5), "1.2Gi");
        assert_eq!(human_bytes(2 * GIB), "2Gi");
        assert_eq!(human_bytes(12 * GIB + 1), "12Gi");
    }

    #[test]
    fn a_new_volume_shows_its_limit_and_nothing_held() {
        let learnt = Learnt {
            limit: Some(limit(true)),
            measured: None,
            created: true,
            marked: false,
        };
        let u = next(None, Some(10 * GIB), &learnt, 0.9).unwrap();
        assert_eq!(u.limit, Some(LimitMode::Enforced));
        assert_eq!(
            (u.used.as_deref(), u.used_bytes, u.used_percent),
            (Some("0"), Some(0), Some(0))
        );
        let advisory = Learnt {
            limit: Some(limit(false)),
            measured: None,
            created: false,
            marked: false,
        };
        let u = next(None, Some(10 * GIB), &advisory, 0.9).unwrap();
        assert_eq!(u.limit, Some(LimitMode::Advisory));
        assert!(u.limit_message.unwrap().contains("cannot limit"));
        // Without a capacity and nothing measured, an existing volume shows nothing yet.
        assert_eq!(next(None, None, &Learnt::default(), 0.9), None);
    }

    #[test]
    fn small_changes_are_not_written_and_big_ones_are() {
        let first = next(
            None,
            Some(10 * GIB),
            &Learnt {
                limit: None,
                measured: Some(measured(GIB)),
                created: false,
                marked: false,
            },
            0.9,
        )
        .unwrap();
        assert_eq!(
            (first.used.as_deref(), first.used_percent),
            (Some("1Gi"), Some(10))
        );
        // 50 MiB more on a 10 GiB capacity: under the 1% step, the status stays as it is.
        let small = Learnt {
            limit: None,
            measured: Some(measured(GIB + 50 * MIB)),
            created: false,
            marked: false,
        };
        assert_eq!(
            next(Some(&first), Some(10 * GIB), &small, 0.9).as_ref(),
            Some(&first)
        );
        // 200 MiB more: written.
        let big = Learnt {
            limit: None,
            measured: Some(measured(GIB + 200 * MIB)),
            created: false,
            marked: false,
        };
        let after = next(Some(&first), Some(10 * GIB), &big, 0.9).unwrap();
        assert_eq!(after.used_bytes, Some((GIB + 200 * MIB) as i64));
        // Without a capacity: a tenth or 64 MiB.
        assert!(!worth_writing(100 * MIB, 150 * MIB, None, 0.9));
        assert!(worth_writing(100 * MIB, 170 * MIB, None, 0.9));
        assert!(!worth_writing(10 * GIB, 10 * GIB + 900 * MIB, None, 0.9));
        assert!(worth_writing(10 * GIB, 11 * GIB + 100 * MIB, None, 0.9));
    }

    #[test]
    fn crossing_the_threshold_is_written_once_with_a_warning() {
        let cap = Some(10 * GIB);
        let below = next(
            None,
            cap,
            &Learnt {
                limit: Some(limit(true)),
                measured: Some(measured(9150 * MIB)),
                created: false,
                marked: false,
            },
            0.9,
        )
        .unwrap();
        // 9,216 MiB is 90%: a step of 70 MiB (under 1%) that crosses the threshold is written.
        let crossed = next(
            Some(&below),
            cap,
            &Learnt {
                limit: None,
                measured: Some(measured(9220 * MIB)),
                created: false,
                marked: false,
            },
            0.9,
        )
        .unwrap();
        assert_ne!(crossed, below);
        let note = nearly_full_note(Some(&below), Some(&crossed), cap, 0.9).unwrap();
        assert_eq!(
            note,
            "holds 9Gi of its 10Gi capacity (90%); writes past the capacity will fail: raise spec.capacity or remove data"
        );
        // Already past it: no second warning.
        let fuller = next(
            Some(&crossed),
            cap,
            &Learnt {
                limit: None,
                measured: Some(measured(9800 * MIB)),
                created: false,
                marked: false,
            },
            0.9,
        )
        .unwrap();
        assert_eq!(nearly_full_note(Some(&crossed), Some(&fuller), cap, 0.9), None);
    }

    #[test]
    fn a_failed_measurement_keeps_the_figure_shown_and_a_lost_capacity_drops_the_limit() {
        let shown = next(
            None,
            Some(10 * GIB),
            &Learnt {
                limit: Some(limit(true)),
                measured: Some(measured(3 * GIB)),
                created: false,
                marked: false,
            },
            0.9,
        )
        .unwrap();
        let mut failed = measured(0);
        failed.used_bytes = None;
        failed.error = Some(crate::agent::api::ErrorDetail {
            code: "not_found".into(),
            message: "gone".into(),
        });
        let learnt = Learnt {
            limit: None,
            measured: Some(failed),
            created: false,
            marked: false,
        };
        assert_eq!(
            next(Some(&shown), Some(10 * GIB), &learnt, 0.9).as_ref(),
            Some(&shown)
        );
        // spec.capacity removed: no limit, no percentage; the figure stays.
        let u = next(Some(&shown), None, &Learnt::default(), 0.9).unwrap();
        assert_eq!(
            (u.limit, u.used_percent, u.used_bytes),
            (None, None, Some((3 * GIB) as i64))
        );
    }
}
