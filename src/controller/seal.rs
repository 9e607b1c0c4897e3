//! berth's seal on what it records in a volume's status.
//!
//! A volume's status says where its data is (`host`, `hostPath`), which app it is bound to
//! (`app`) and under which tenant's root (`tenant`). Whoever may write the status subresource can
//! change those fields, so berth never acts on them unless they carry its seal: an HMAC-SHA256 of
//! the fields and the volume's uid, keyed with a secret only the controller holds. A record whose
//! seal does not verify is treated as absent: berth does not keep it mounted, delete data by it,
//! or enforce immutability against it.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::crd::{MigrationStatus, OrphanedData};

/// The sealed part of a volume's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub uid: &'a str,
    pub app: &'a str,
    pub tenant: &'a str,
    pub host: &'a str,
    /// Absent between the placement record and the agent's first answer.
    pub host_path: Option<&'a str>,
    /// What else berth acts on: a move under way and data it left on lost hosts
    /// ([`extra`]); `None` when there is neither, so that the seals of plain records stay
    /// what they were.
    pub extra: Option<&'a str>,
}

impl Record<'_> {
    /// Unambiguous bytes to sign: every field is length-prefixed.
    fn canonical(&self) -> Vec<u8> {
        let mut out = b"berth-status-v1".to_vec();
        for field in [
            self.uid,
            self.app,
            self.tenant,
            self.host,
            self.host_path.unwrap_or("\u{0}"),
        ] {
            out.extend_from_slice(&(field.len() as u64).to_be_bytes());
            out.extend_from_slice(field.as_bytes());
        }
        if let Some(extra) = self.extra {
            out.extend_from_slice(b"extra");
            out.extend_from_slice(&(extra.len() as u64).to_be_bytes());
            out.extend_from_slice(extra.as_bytes());
        }
        out
    }
}

/// The sealed text of a status's migration and orphaned data: the fields berth acts on (not the
/// progress it only shows), in a fixed order. `None` when there is neither.
pub fn extra(migration: Option<&MigrationStatus>, orphaned: &[OrphanedData]) -> Option<String> {
    if migration.is_none() && orphaned.is_empty() {
        return None;
    }
    let m = migration.map(|m| {
        serde_json::json!([
            m.from,
            m.to,
            m.id,
            m.step.as_str(),
            m.pass,
            m.instances,
            m.stopped_at,
            m.manifest
        ])
    });
    let o: Vec<_> = orphaned
        .iter()
        .map(|o| serde_json::json!([o.host, o.host_path, o.abandoned_at, o.found]))
        .collect();
    Some(serde_json::json!({ "m": m, "o": o }).to_string())
}

/// Seals and checks records.
#[derive(Clone)]
pub struct Sealer {
    key: Vec<u8>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<key redacted>)")
    }
}

type HmacSha256 = Hmac<Sha256>;

impl Sealer {
    /// A sealer whose key is derived from `secret` (the agents' credential secret), so that
    /// every replica of the controller holding the same secret seals alike.
    pub fn new(secret: &[u8]) -> Self {
        let mut mac = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable_key());
        mac.update(b"berth-status-seal-key-v1");
        Self {
            key: mac.finalize().into_bytes().to_vec(),
        }
    }

    fn mac(&self, record: &Record<'_>) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).unwrap_or_else(|_| unreachable_key());
        mac.update(&record.canonical());
        mac
    }

    /// The seal of a record, as lower-case hex.
    pub fn seal(&self, record: &Record<'_>) -> String {
        hex(&self.mac(record).finalize().into_bytes())
    }

    /// Whether `seal` is this controller's seal of `record` (compared in constant time).
    pub fn verify(&self, record: &Record<'_>, seal: &str) -> bool {
        let Some(bytes) = unhex(seal) else {
            return false;
        };
        self.mac(record).verify_slice(&bytes).is_ok()
    }
}

/// HMAC accepts keys of any length; this cannot happen.
fn unreachable_key() -> HmacSha256 {
    unreachable!("HMAC-SHA256 takes keys of any length")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(host: &'a str, host_path: Option<&'a str>) -> Record<'a> {
        Record {
            uid: "uid-1",
            app: "/toto/web",
            tenant: "toto",
            host,
            host_path,
            extra: None,
        }
    }

    #[test]
    fn a_seal_verifies_only_its_own_record_and_key() {
        let sealer = Sealer::new(b"agent-secret");
        let r = record("node-1", Some("/containerdata/user-toto/data"));
        let seal = sealer.seal(&r);
        assert!(sealer.verify(&r, &seal));
        assert_eq!(seal.len(), 64);
        // Any field changed, or another key, or junk: refused.
        assert!(!sealer.verify(&record("node-2", Some("/containerdata/user-toto/data")), &seal));
        assert!(!sealer.verify(&record("node-1", Some("/containerdata/user-tata/data")), &seal));
        assert!(!sealer.verify(&record("node-1", None), &seal));
        assert!(!sealer.verify(
            &Record {
                uid: "uid-2",
                ..r.clone()
            },
            &seal
        ));
        assert!(!sealer.verify(
            &Record {
                tenant: "tata",
                ..r.clone()
            },
            &seal
        ));
        assert!(!sealer.verify(
            &Record {
                app: "/toto/db",
                ..r.clone()
            },
            &seal
        ));
        assert!(!Sealer::new(b"another-secret").verify(&r, &seal));
        assert!(!sealer.verify(&r, "zz"));
        assert!(!sealer.verify(&r, ""));
    }

    #[test]
    fn fields_cannot_be_shifted_into_each_other() {
        let sealer = Sealer::new(b"k");
        let a = Record {
            uid: "u",
            app: "/a/b",
            tenant: "c",
            host: "h",
            host_path: None,
            extra: None,
        };
        let b = Record {
            app: "/a/",
            tenant: "bc",
            ..a.clone()
        };
        assert_ne!(sealer.seal(&a), sealer.seal(&b));
        assert_eq!(format!("{sealer:?}"), "Sealer(<key redacted>)");
    }

    #[test]
    fn a_migration_is_sealed_but_its_progress_is_not() {
        let sealer = Sealer::new(b"k");
        let mut m = MigrationStatus {
            from: "node-1".into(),
            to: "node-2".into(),
            id: "abc-1".into(),
            pass: 1,
            ..Default::default()
        };
        let text = extra(Some(&m), &[]).unwrap();
        let r = Record {
            extra: Some(&text),
            ..record("node-1", Some("/d"))
        };
        let seal = sealer.seal(&r);
        // A plain record's seal does not cover a migration added to it.
        assert!(!sealer.verify(&record("node-1", Some("/d")), &seal));
        m.progress = Some("50%".into());
        m.bytes_done = Some(5);
        assert_eq!(extra(Some(&m), &[]).unwrap(), text, "progress is not sealed");
        for forged in [
            MigrationStatus {
                to: "node-3".into(),
                ..m.clone()
            },
            MigrationStatus {
                from: "node-9".into(),
                ..m.clone()
            },
            MigrationStatus {
                step: crate::crd::MigrationStep::Switching,
                ..m.clone()
            },
            MigrationStatus {
                instances: Some(0),
                ..m.clone()
            },
        ] {
            let t = extra(Some(&forged), &[]).unwrap();
            assert!(
                !sealer.verify(
                    &Record {
                        extra: Some(&t),
                        ..r.clone()
                    },
                    &seal
                ),
                "{forged:?}"
            );
        }
        let orphan = OrphanedData {
            host: "node-1".into(),
            host_path: "/d".into(),
            abandoned_at: "2026-01-01T00:00:00Z".into(),
            found: false,
        };
        let t = extra(Some(&m), std::slice::from_ref(&orphan)).unwrap();
        assert!(!sealer.verify(
            &Record {
                extra: Some(&t),
                ..r.clone()
            },
            &seal
        ));
        assert_eq!(extra(None, &[]), None);
    }
}
