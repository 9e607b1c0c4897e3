//! Which volume a piece of data belongs to.
//!
//! Every volume's data carries berth's identity of it, the volume's Kubernetes UID, in the
//! extended attribute [`XATTR`] (`trusted.berth.volume`) of the volume's own directory or file.
//! `trusted.*` attributes can be read and written only with `CAP_SYS_ADMIN` in the initial user
//! namespace: containers never have it (Docker drops it; under userns-remap they have it only in
//! their own namespace), so a tenant can neither forge, copy nor remove the mark, while it stays
//! with the data when the data is renamed, and disappears with it when the data is lost. A host
//! rebuilt empty, a path reused by another volume of the tenant, or an empty directory Docker
//! created in place of lost data are then told apart from the volume's real data.
//!
//! The value is `bound <uid>` while a volume uses the data and `released <uid>` once the volume
//! was deleted with `reclaimPolicy: Retain` ([`StampState`]); a new volume may adopt released
//! data only when asked to ([`Expect::AdoptReleased`]).

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The extended attribute holding a volume's identity.
pub const XATTR: &str = "trusted.berth.volume";
/// Longest identity accepted (Kubernetes UIDs are 36-character UUIDs).
pub const MAX_IDENTITY_LEN: usize = 64;

/// A volume's identity: its Kubernetes UID (`[A-Za-z0-9-]`, at most 64 characters).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VolumeIdentity(String);

/// An identity that is not a UID.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "identity {0:?} is not a volume UID: use the volume's metadata.uid (letters, digits and '-', at most 64 characters)"
)]
pub struct BadIdentity(pub String);

impl VolumeIdentity {
    pub fn parse(s: &str) -> Result<Self, BadIdentity> {
        let ok = !s.is_empty()
            && s.len() <= MAX_IDENTITY_LEN
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(BadIdentity(s.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for VolumeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for VolumeIdentity {
    type Error = BadIdentity;
    fn try_from(s: String) -> Result<Self, BadIdentity> {
        Self::parse(&s)
    }
}

impl From<VolumeIdentity> for String {
    fn from(v: VolumeIdentity) -> String {
        v.0
    }
}

/// Whether a volume uses the data, or was deleted and left it behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StampState {
    Bound,
    Released,
}

/// What the data at a volume's path says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stamp {
    /// Nothing at the path.
    Absent,
    /// Data without a berth identity; `empty` when it holds nothing (an empty directory or file).
    Unstamped { empty: bool },
    /// Data marked with an identity.
    Marked {
        state: StampState,
        identity: VolumeIdentity,
    },
    /// A mark berth cannot read (written by something else with `CAP_SYS_ADMIN`).
    Unreadable,
}

/// The attribute value of a mark.
pub fn encode(state: StampState, identity: &VolumeIdentity) -> Vec<u8> {
    let word = match state {
        StampState::Bound => "bound",
        StampState::Released => "released",
    };
    format!("{word} {identity}").into_bytes()
}

/// Reads an attribute value; [`Stamp::Unreadable`] when it is not one berth wrote.
pub fn decode(value: &[u8]) -> Stamp {
    let Ok(text) = std::str::from_utf8(value) else {
        return Stamp::Unreadable;
    };
    let (state, id) = match text.split_once(' ') {
        Some(("bound", id)) => (StampState::Bound, id),
        Some(("released", id)) => (StampState::Released, id),
        _ => return Stamp::Unreadable,
    };
    match VolumeIdentity::parse(id) {
        Ok(identity) => Stamp::Marked { state, identity },
        Err(_) => Stamp::Unreadable,
    }
}

/// What the controller knows about the volume's data when it ensures it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expect {
    /// First binding: create the data, or accept data that is already this volume's (a retry) or
    /// empty. Data of unknown origin or of another volume is refused.
    #[default]
    New,
    /// First binding that takes over existing data without an identity (data from before
    /// berth, or from before identities): it is marked as this volume's.
    AdoptUnstamped,
    /// As `AdoptUnstamped`, and also takes over data another volume of the tenant released
    /// (`reclaimPolicy: Retain`): a deliberate choice of the user.
    AdoptReleased,
    /// The volume was bound to data on this host before: it must be there, marked as this
    /// volume's. Nothing is created.
    Bound,
}

/// What ensure does about the mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The data is already this volume's.
    Keep,
    /// Mark the data (created now, or adopted) as this volume's.
    Mark,
}

/// Why the data at a path is not the volume's. Messages name only the tenant's own path.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdentityError {
    #[error(
        "{path} holds the data of another volume (uid {other}{}); berth never gives a volume another volume's data. Choose another hostPath, or delete the other volume's data first",
        if *released { ", released" } else { "" }
    )]
    Mismatch {
        path: String,
        other: String,
        released: bool,
    },
    #[error(
        "{path} holds data released by the deleted volume {other} (reclaimPolicy: Retain); berth gives it to a new volume only when asked to adopt released data. Ask for that, or choose another hostPath"
    )]
    Released { path: String, other: String },
    #[error(
        "{path} already holds data that no berth volume created; berth does not take it over unless asked to adopt it. Ask for adoption if it is this volume's data, or move it away"
    )]
    Unstamped { path: String },
    #[error(
        "{path} should hold this volume's data, which was created on this host before, but it {why}: the data is gone (a rebuilt host, a wiped disk, or another volume's path). berth does not put an empty volume in its place. Restore the data, or move the volume to where its data is"
    )]
    DataMissing { path: String, why: &'static str },
    #[error(
        "{path} should hold this volume's data but carries no berth identity: it is not the data berth created for this volume. Restore the volume's data, or adopt this data if it is the volume's"
    )]
    Missing { path: String },
    #[error(
        "{path} carries an identity mark berth cannot read; berth does not touch it. Ask the host's administrator to inspect the attribute trusted.berth.volume"
    )]
    Unreadable { path: String },
}

impl IdentityError {
    pub fn code(&self) -> &'static str {
        match self {
            IdentityError::Mismatch { .. } | IdentityError::Unreadable { .. } => "identity_mismatch",
            IdentityError::Released { .. } => "released_data",
            IdentityError::Unstamped { .. } => "unstamped_data",
            IdentityError::DataMissing { .. } => "data_missing",
            IdentityError::Missing { .. } => "identity_missing",
        }
    }
}

/// Decides what ensure may do with the data found at `path` for the volume `id`.
pub fn decide(
    found: &Stamp,
    id: &VolumeIdentity,
    expect: Expect,
    path: &str,
) -> Result<Action, IdentityError> {
    let path = path.to_owned();
    match found {
        Stamp::Absent if expect == Expect::Bound => Err(IdentityError::DataMissing {
            path,
            why: "does not exist",
        }),
        Stamp::Absent => Ok(Action::Mark),
        Stamp::Marked { state, identity } if identity == id => Ok(match state {
            StampState::Bound => Action::Keep,
            StampState::Released => Action::Mark,
        }),
        Stamp::Marked {
            state: StampState::Released,
            identity,
        } => match expect {
            Expect::AdoptReleased => Ok(Action::Mark),
            Expect::Bound => Err(IdentityError::Mismatch {
                path,
                other: identity.to_string(),
                released: true,
            }),
            _ => Err(IdentityError::Released {
                path,
                other: identity.to_string(),
            }),
        },
        Stamp::Marked { identity, .. } => Err(IdentityError::Mismatch {
            path,
            other: identity.to_string(),
            released: false,
        }),
        Stamp::Unreadable => Err(IdentityError::Unreadable { path }),
        Stamp::Unstamped { empty } => match expect {
            Expect::Bound if *empty => Err(IdentityError::DataMissing {
                path,
                why: "is empty and carries no berth identity",
            }),
            Expect::Bound => Err(IdentityError::Missing { path }),
            Expect::New if !*empty => Err(IdentityError::Unstamped { path }),
            _ => Ok(Action::Mark),
        },
    }
}

/// May data marked `found` be deleted by a request naming `id`? Unmarked data may not: it is
/// not known to be the volume's.
pub fn check_delete(found: &Stamp, id: &VolumeIdentity, path: &str) -> Result<(), IdentityError> {
    match found {
        Stamp::Absent => Ok(()),
        Stamp::Marked { identity, .. } if identity == id => Ok(()),
        Stamp::Marked { state, identity } => Err(IdentityError::Mismatch {
            path: path.to_owned(),
            other: identity.to_string(),
            released: *state == StampState::Released,
        }),
        Stamp::Unreadable => Err(IdentityError::Unreadable {
            path: path.to_owned(),
        }),
        Stamp::Unstamped { .. } => Err(IdentityError::Missing {
            path: path.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> VolumeIdentity {
        VolumeIdentity::parse(s).unwrap()
    }

    #[test]
    fn identities_are_uids() {
        assert!(VolumeIdentity::parse("6f1c1a52-3b0e-4c8e-9a3e-2b8e3c1d9f00").is_ok());
        for bad in ["", "a b", "a/b", "../x", "é", &"a".repeat(65), "a\nb"] {
            assert!(VolumeIdentity::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn marks_round_trip_and_foreign_values_are_unreadable() {
        let a = id("uid-a");
        for state in [StampState::Bound, StampState::Released] {
            assert_eq!(
                decode(&encode(state, &a)),
                Stamp::Marked {
                    state,
                    identity: a.clone()
                }
            );
        }
        for bad in [&b"bound"[..], b"bound ", b"owned uid-a", b"bound uid a", b"\xff"] {
            assert_eq!(decode(bad), Stamp::Unreadable, "{bad:?}");
        }
    }

    #[test]
    fn decisions() {
        let a = id("uid-a");
        let b = id("uid-b");
        let bound = |i: &VolumeIdentity| Stamp::Marked {
            state: StampState::Bound,
            identity: i.clone(),
        };
        let released = |i: &VolumeIdentity| Stamp::Marked {
            state: StampState::Released,
            identity: i.clone(),
        };
        let code = |r: Result<Action, IdentityError>| r.map_err(|e| e.code());
        use Expect::*;
        let empty = Stamp::Unstamped { empty: true };
        let cases: Vec<(Stamp, Expect, Result<Action, &str>)> = vec![
            (Stamp::Absent, New, Ok(Action::Mark)),
            (Stamp::Absent, Bound, Err("data_missing")),
            (bound(&a), New, Ok(Action::Keep)),
            (bound(&a), Bound, Ok(Action::Keep)),
            (released(&a), Bound, Ok(Action::Mark)),
            (bound(&b), New, Err("identity_mismatch")),
            (bound(&b), AdoptReleased, Err("identity_mismatch")),
            (bound(&b), Bound, Err("identity_mismatch")),
            (released(&b), New, Err("released_data")),
            (released(&b), AdoptUnstamped, Err("released_data")),
            (released(&b), AdoptReleased, Ok(Action::Mark)),
            (released(&b), Bound, Err("identity_mismatch")),
            (Stamp::Unstamped { empty: false }, New, Err("unstamped_data")),
            (empty.clone(), New, Ok(Action::Mark)),
            (
                Stamp::Unstamped { empty: false },
                AdoptUnstamped,
                Ok(Action::Mark),
            ),
            (empty, Bound, Err("data_missing")),
            (Stamp::Unstamped { empty: false }, Bound, Err("identity_missing")),
            (Stamp::Unreadable, AdoptReleased, Err("identity_mismatch")),
        ];
        for (found, expect, want) in cases {
            assert_eq!(
                code(decide(&found, &a, expect, "/x")),
                want,
                "{found:?} {expect:?}"
            );
        }
        assert!(check_delete(&bound(&a), &a, "/x").is_ok());
        assert!(check_delete(&Stamp::Absent, &a, "/x").is_ok());
        assert_eq!(
            check_delete(&released(&b), &a, "/x").unwrap_err().code(),
            "identity_mismatch"
        );
        assert_eq!(
            check_delete(&Stamp::Unstamped { empty: true }, &a, "/x")
                .unwrap_err()
                .code(),
            "identity_missing"
        );
    }
}
