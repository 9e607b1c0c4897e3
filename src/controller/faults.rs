//! Crash points for the fault soak (`tests/soak.rs`): with
//! `BERTH_CRASH_POINTS=after-placement-record:0.2,after-app-write:0.1` the controller aborts at
//! that point of a pass with that probability, as a `kill -9` landing exactly there would. The
//! variable is read once; unset (as always in production), a crash point costs one branch.

use std::{
    collections::HashMap,
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

const VARIABLE: &str = "BERTH_CRASH_POINTS";

fn points() -> &'static HashMap<String, f64> {
    static POINTS: OnceLock<HashMap<String, f64>> = OnceLock::new();
    POINTS.get_or_init(|| parse(&std::env::var(VARIABLE).unwrap_or_default()))
}

fn parse(spec: &str) -> HashMap<String, f64> {
    spec.split(',')
        .filter_map(|p| {
            let (name, probability) = p.trim().split_once(':')?;
            Some((name.to_owned(), probability.parse().ok()?))
        })
        .collect()
}

/// A pseudo-random number in [0, 1): seeded by the clock and the process, good enough to
/// scatter crashes.
fn unit() -> f64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id());
    let mut x = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed) ^ seed;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// Aborts the process at `name` with the probability the environment gives it.
pub fn crash_point(name: &str) {
    if let Some(&p) = points().get(name)
        && unit() < p
    {
        eprintln!("berth: crash point {name} reached; aborting (BERTH_CRASH_POINTS)");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_points_are_named_with_a_probability() {
        let p = parse("after-placement-record:0.2, after-app-write:1,bad,x:y");
        assert_eq!(p.len(), 2);
        assert_eq!(p["after-placement-record"], 0.2);
        assert_eq!(p["after-app-write"], 1.0);
        assert!(parse("").is_empty());
        for _ in 0..1000 {
            let u = unit();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
