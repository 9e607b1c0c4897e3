//! User-namespace remapping: which host uid/gid a container uid/gid becomes.
//!
//! Docker's `userns-remap` reads the remap user's lines from `/etc/subuid` and `/etc/subgid`
//! (`name:start:count`), sorts them by host start and *concatenates* them: container ids
//! `0..count1` map to the first range, the next `count2` ids to the second, and so on. Ids past the
//! last range are unmapped: the agent refuses them rather than guessing. With no ranges the map is
//! the identity (no remap), which is what Docker does without `userns-remap`.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// `(uid_t)-1` means "leave unchanged" to `chown(2)`; it is never a valid owner.
const INVALID_ID: u32 = u32::MAX;

/// One subordinate id range as seen on the host: container ids starting at `container_start`
/// map to host ids `host_start..host_start + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdRange {
    pub container_start: u32,
    pub host_start: u32,
    pub count: u32,
}

/// A container→host id map for one kind of id (uids or gids).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdMap {
    ranges: Vec<IdRange>,
}

/// Why remap configuration was refused. Messages say which file or flag to fix.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RemapError {
    #[error("{source_name} line {line}: {why} (expected `name:start:count`, e.g. `dockremap:165536:65536`)")]
    BadLine {
        source_name: String,
        line: usize,
        why: String,
    },
    #[error(
        "{flag} {value:?}: {why}; expected host ranges START:COUNT[,START:COUNT...], e.g. {flag} 165536:65536"
    )]
    BadFlag {
        flag: String,
        value: String,
        why: String,
    },
    #[error(
        "{source_name}: range {host_start}:{count} overlaps another range; subordinate id ranges of one user must not overlap"
    )]
    Overlap {
        source_name: String,
        host_start: u32,
        count: u32,
    },
    #[error("{source_name}: the ranges map more than 2^32 ids; shorten them")]
    TooMany { source_name: String },
}

impl IdMap {
    /// No remap: container id N is host id N.
    pub fn identity() -> Self {
        Self { ranges: Vec::new() }
    }

    /// True when no remap is applied.
    pub fn is_identity(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The ranges in container order (empty for the identity).
    pub fn ranges(&self) -> &[IdRange] {
        &self.ranges
    }

    /// Builds a map from `(host_start, count)` pairs the way Docker does: sorted by host start,
    /// concatenated in container id space. Zero-length ranges are dropped; overlaps are refused.
    pub fn from_host_ranges(source_name: &str, pairs: &[(u32, u32)]) -> Result<Self, RemapError> {
        let mut pairs: Vec<(u32, u32)> = pairs.iter().copied().filter(|p| p.1 > 0).collect();
        pairs.sort_unstable();
        let mut ranges = Vec::with_capacity(pairs.len());
        let mut next_container: u64 = 0;
        let mut prev_end: u64 = 0;
        for (i, &(host_start, count)) in pairs.iter().enumerate() {
            let end = u64::from(host_start) + u64::from(count);
            if end > u64::from(INVALID_ID) {
                return Err(RemapError::TooMany {
                    source_name: source_name.to_owned(),
                });
            }
            if i > 0 && u64::from(host_start) < prev_end {
                return Err(RemapError::Overlap {
                    source_name: source_name.to_owned(),
                    host_start,
                    count,
                });
            }
            prev_end = end;
            let container_start = u32::try_from(next_container).map_err(|_| RemapError::TooMany {
                source_name: source_name.to_owned(),
            })?;
            ranges.push(IdRange {
                container_start,
                host_start,
                count,
            });
            next_container += u64::from(count);
        }
        if next_container > u64::from(INVALID_ID) {
            return Err(RemapError::TooMany {
                source_name: source_name.to_owned(),
            });
        }
        Ok(Self { ranges })
    }

    /// Parses `/etc/subuid` or `/etc/subgid` text and keeps the lines of `user` (matched by name,
    /// or by number when `user` is numeric). Blank lines and `#` comments are skipped; a malformed
    /// line of *this* user is an error, other users' lines are not looked at closely.
    pub fn parse_subid(source_name: &str, contents: &str, user: &str) -> Result<Self, RemapError> {
        let mut pairs = Vec::new();
        for (idx, raw) in contents.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split(':');
            if fields.next() != Some(user) {
                continue;
            }
            let bad = |why: &str| RemapError::BadLine {
                source_name: source_name.to_owned(),
                line: idx + 1,
                why: why.to_owned(),
            };
            let start = fields.next().ok_or_else(|| bad("missing start"))?;
            let count = fields.next().ok_or_else(|| bad("missing count"))?;
            if fields.next().is_some() {
                return Err(bad("too many fields"));
            }
            let start: u32 = start
                .parse()
                .map_err(|_| bad("start is not a number below 2^32"))?;
            let count: u32 = count
                .parse()
                .map_err(|_| bad("count is not a number below 2^32"))?;
            if count == 0 {
                return Err(bad("count must be at least 1"));
            }
            pairs.push((start, count));
        }
        Self::from_host_ranges(source_name, &pairs)
    }

    /// Parses a flag value `START:COUNT[,START:COUNT...]` of host ranges. Errors are given in the
    /// flag's own terms (which range, which field), never as lines of a file.
    pub fn parse_flag(flag: &str, value: &str) -> Result<Self, RemapError> {
        let parts: Vec<&str> = value.split(',').collect();
        let mut pairs = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let bad = |why: &str| RemapError::BadFlag {
                flag: flag.to_owned(),
                value: value.to_owned(),
                why: if parts.len() > 1 {
                    format!("range {} ({:?}): {why}", i + 1, part.trim())
                } else {
                    why.to_owned()
                },
            };
            let (start, count) = part
                .trim()
                .split_once(':')
                .ok_or_else(|| bad("a range must be START:COUNT"))?;
            let start: u32 = start
                .parse()
                .map_err(|_| bad("START is not a number below 2^32"))?;
            let count: u32 = count
                .parse()
                .map_err(|_| bad("COUNT is not a number below 2^32"))?;
            if count == 0 {
                return Err(bad("COUNT must be at least 1"));
            }
            pairs.push((start, count));
        }
        Self::from_host_ranges(flag, &pairs)
    }

    /// The host id of container id `id`, or `None` when it is outside every range.
    pub fn to_host(&self, id: u32) -> Option<u32> {
        if id == INVALID_ID {
            return None;
        }
        if self.ranges.is_empty() {
            return Some(id);
        }
        self.ranges.iter().find_map(|r| {
            let off = id.checked_sub(r.container_start)?;
            (off < r.count).then(|| r.host_start + off)
        })
    }

    /// The container id of host id `id`, or `None` when the host id is not mapped (it shows as the
    /// overflow id, usually 65534, inside the container).
    pub fn to_container(&self, id: u32) -> Option<u32> {
        if self.ranges.is_empty() {
            return Some(id);
        }
        self.ranges.iter().find_map(|r| {
            let off = id.checked_sub(r.host_start)?;
            (off < r.count).then(|| r.container_start + off)
        })
    }

    /// How many container ids are mapped (`None` = all of them, the identity).
    pub fn mapped_len(&self) -> Option<u64> {
        if self.ranges.is_empty() {
            None
        } else {
            Some(self.ranges.iter().map(|r| u64::from(r.count)).sum())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_range_shifts_by_base() {
        let m = IdMap::parse_subid("subuid", "dockremap:165536:65536\n", "dockremap").unwrap();
        assert_eq!(m.to_host(0), Some(165536));
        assert_eq!(m.to_host(1000), Some(166536));
        assert_eq!(m.to_host(65535), Some(231071));
        assert_eq!(m.to_host(65536), None);
        assert_eq!(m.to_container(166536), Some(1000));
        assert_eq!(m.to_container(1000), None);
        assert_eq!(m.mapped_len(), Some(65536));
    }

    #[test]
    fn ranges_are_sorted_by_host_start_then_concatenated() {
        let text = "other:100000:65536\n# comment\ndockremap:300000:10\n\ndockremap:200000:5\n";
        let m = IdMap::parse_subid("subuid", text, "dockremap").unwrap();
        // Sorted: 200000:5 first (container 0..5), then 300000:10 (container 5..15).
        assert_eq!(m.to_host(0), Some(200000));
        assert_eq!(m.to_host(4), Some(200004));
        assert_eq!(m.to_host(5), Some(300000));
        assert_eq!(m.to_host(14), Some(300009));
        assert_eq!(m.to_host(15), None);
        assert_eq!(m.to_container(300009), Some(14));
        assert_eq!(m.to_container(100000), None);
    }

    #[test]
    fn no_lines_for_the_user_is_identity() {
        let m = IdMap::parse_subid("subuid", "someone:100000:65536\n", "dockremap").unwrap();
        assert!(m.is_identity());
        assert_eq!(m.to_host(1000), Some(1000));
        assert_eq!(m.to_host(u32::MAX), None, "(uid_t)-1 is never an owner");
    }

    #[test]
    fn numeric_user_matches_numeric_lines_only() {
        let m = IdMap::parse_subid("subuid", "dockremap:1:1\n998:500000:100\n", "998").unwrap();
        assert_eq!(m.to_host(0), Some(500000));
    }

    #[test]
    fn malformed_lines_of_the_user_are_refused_with_the_line_number() {
        let e = IdMap::parse_subid("/etc/subuid", "a:1:1\ndockremap:x:5\n", "dockremap").unwrap_err();
        assert!(e.to_string().contains("/etc/subuid line 2"), "{e}");
        assert!(IdMap::parse_subid("s", "dockremap:1\n", "dockremap").is_err());
        assert!(IdMap::parse_subid("s", "dockremap:1:2:3\n", "dockremap").is_err());
        // Another user's junk is not our business.
        assert!(IdMap::parse_subid("s", "junk\n", "dockremap").is_ok());
    }

    #[test]
    fn overlapping_or_overflowing_ranges_are_refused() {
        assert!(matches!(
            IdMap::from_host_ranges("f", &[(100, 50), (120, 10)]),
            Err(RemapError::Overlap { .. })
        ));
        assert!(matches!(
            IdMap::from_host_ranges("f", &[(u32::MAX - 5, 10)]),
            Err(RemapError::TooMany { .. })
        ));
    }

    #[test]
    fn flag_form_parses_several_ranges() {
        let m = IdMap::parse_flag("--uid-map", "165536:65536,300000:1000").unwrap();
        assert_eq!(m.to_host(65536), Some(300000));
        assert!(IdMap::parse_flag("--uid-map", "165536").is_err());
        assert!(IdMap::parse_flag("--uid-map", "a:1").is_err());
    }

    #[test]
    fn flag_errors_speak_the_flags_format_and_refuse_empty_ranges() {
        let e = IdMap::parse_flag("--uid-map", "165536:0")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "--uid-map \"165536:0\": COUNT must be at least 1; expected host ranges START:COUNT[,START:COUNT...], e.g. --uid-map 165536:65536"
        );
        let e = IdMap::parse_flag("--gid-map", "165536:65536,x:5")
            .unwrap_err()
            .to_string();
        assert!(e.contains("range 2 (\"x:5\"): START is not a number"), "{e}");
        assert!(!e.contains("line"), "a flag has no lines: {e}");
        let e = IdMap::parse_subid("/etc/subuid", "dockremap:165536:0\n", "dockremap").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/etc/subuid line 1: count must be at least 1"),
            "{e}"
        );
    }
}
