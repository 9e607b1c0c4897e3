//! Transfer tickets: the controller's permission for one source to write one pass of one
//! transfer into one target agent's staging area.
//!
//! ```text
//! ticket = "berth-ticket-v1:" id ":" pass ":" tenant ":" hostPath ":" identity ":" expires ":" mac
//! mac    = hex(HMAC-SHA256(target_token, "berth-transfer-ticket-v1\n" id "\n" pass "\n" tenant
//!                          "\n" hostPath "\n" identity "\n" expires))
//! ```
//!
//! `expires` is in Unix seconds. No field can hold `:` or a newline (each is validated), so the
//! text is unambiguous. The controller knows every host's token and mints the ticket with the
//! **target's** token ([`crate::agent::credentials::transfer_ticket`]); the target checks it with
//! its own; the source only carries it and never learns a token. A ticket is used once: the
//! target remembers the tickets it accepted until they expire, and its staging area remembers
//! the last pass it completed (a pass at or below it is refused even after a restart).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{SystemTime, UNIX_EPOCH},
};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::TransferError;
use crate::{
    agent::identity::VolumeIdentity,
    tenant::{TenantId, VolumePath},
};

pub const PREFIX: &str = "berth-ticket-v1";
const CONTEXT: &str = "berth-transfer-ticket-v1";
/// Longest validity the target accepts (a ticket is for starting one pass).
pub const MAX_VALIDITY_SECS: u64 = 24 * 3600;

/// What a ticket allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TicketClaims {
    pub transfer_id: String,
    pub pass: u32,
    /// The tenant and path on the target.
    pub tenant: String,
    pub host_path: String,
    pub identity: String,
    /// Unix seconds after which the ticket is refused.
    pub expires_at: u64,
}

fn message(c: &TicketClaims) -> String {
    format!(
        "{CONTEXT}\n{}\n{}\n{}\n{}\n{}\n{}",
        c.transfer_id, c.pass, c.tenant, c.host_path, c.identity, c.expires_at
    )
}

fn mac(key: &[u8], c: &TicketClaims) -> [u8; 32] {
    let Ok(mut m) = Hmac::<Sha256>::new_from_slice(key) else {
        unreachable!("HMAC-SHA256 accepts keys of any length")
    };
    m.update(message(c).as_bytes());
    m.finalize().into_bytes().into()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A transfer id: `[A-Za-z0-9-]`, 1 to 64 characters.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Checks the claims' fields (what the controller mints must be what the target accepts).
pub fn check_claims(c: &TicketClaims) -> Result<(), TransferError> {
    let bad = |why: &str| TransferError::BadRequest(format!("ticket claims: {why}"));
    if !valid_id(&c.transfer_id) {
        return Err(bad("the transfer id must be 1 to 64 of [A-Za-z0-9-]"));
    }
    TenantId::parse(&c.tenant).map_err(|e| bad(&format!("tenant {e}")))?;
    VolumePath::parse(&c.host_path).map_err(|e| bad(&format!("hostPath {e}")))?;
    VolumeIdentity::parse(&c.identity).map_err(|e| bad(&e.to_string()))?;
    Ok(())
}

/// The ticket for `claims`, keyed with the target agent's token.
pub fn mint(target_token: &str, claims: &TicketClaims) -> String {
    let c = claims;
    format!(
        "{PREFIX}:{}:{}:{}:{}:{}:{}:{}",
        c.transfer_id,
        c.pass,
        c.tenant,
        c.host_path,
        c.identity,
        c.expires_at,
        hex(&mac(target_token.trim().as_bytes(), c))
    )
}

/// Parses a ticket without checking it (the source reads where it is for).
pub fn parse(ticket: &str) -> Result<(TicketClaims, String), TransferError> {
    let bad = || TransferError::Ticket("the ticket is malformed".into());
    let parts: Vec<&str> = ticket.trim().split(':').collect();
    let [prefix, id, pass, tenant, path, identity, expires, mac] = parts[..] else {
        return Err(bad());
    };
    if prefix != PREFIX || mac.len() != 64 {
        return Err(bad());
    }
    let claims = TicketClaims {
        transfer_id: id.to_owned(),
        pass: pass.parse().map_err(|_| bad())?,
        tenant: tenant.to_owned(),
        host_path: path.to_owned(),
        identity: identity.to_owned(),
        expires_at: expires.parse().map_err(|_| bad())?,
    };
    check_claims(&claims).map_err(|_| bad())?;
    Ok((claims, mac.to_owned()))
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Tickets a target accepted, remembered until they expire: each is used once.
#[derive(Debug, Default)]
pub struct Used(Mutex<HashMap<String, u64>>);

impl Used {
    /// Checks a ticket with this agent's token, then marks it used.
    pub fn accept(&self, token: &[u8], ticket: &str, now: u64) -> Result<TicketClaims, TransferError> {
        let (claims, presented) = parse(ticket)?;
        let expected = hex(&mac(token, &claims));
        if !bool::from(expected.as_bytes().ct_eq(presented.as_bytes())) {
            return Err(TransferError::Ticket(
                "the ticket was not made for this agent (wrong signature); ask the controller for a new one"
                    .into(),
            ));
        }
        if claims.expires_at <= now {
            return Err(TransferError::TicketExpired);
        }
        if claims.expires_at > now + MAX_VALIDITY_SECS {
            return Err(TransferError::Ticket(format!(
                "the ticket is valid for more than {} hours; tickets are for starting one pass",
                MAX_VALIDITY_SECS / 3600
            )));
        }
        let mut used = self.0.lock().unwrap_or_else(|p| p.into_inner());
        used.retain(|_, exp| *exp > now);
        if used.contains_key(&presented) {
            return Err(TransferError::TicketReplayed);
        }
        used.insert(presented, claims.expires_at);
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> TicketClaims {
        TicketClaims {
            transfer_id: "mig-1".into(),
            pass: 2,
            tenant: "toto".into(),
            host_path: "/var/log".into(),
            identity: "6f1c1a52-3b0e-4c8e-9a3e-2b8e3c1d9f00".into(),
            expires_at: 1_000_000,
        }
    }

    #[test]
    fn a_ticket_is_checked_with_the_targets_token_once_and_until_it_expires() {
        let t = mint("target-token-0123456789", &claims());
        assert!(t.starts_with(
            "berth-ticket-v1:mig-1:2:toto:/var/log:6f1c1a52-3b0e-4c8e-9a3e-2b8e3c1d9f00:1000000:"
        ));
        let used = Used::default();
        assert!(matches!(
            used.accept(b"other-token-0123456789", &t, 999_000),
            Err(TransferError::Ticket(_))
        ));
        assert!(matches!(
            used.accept(b"target-token-0123456789", &t, 1_000_000),
            Err(TransferError::TicketExpired)
        ));
        assert_eq!(
            used.accept(b"target-token-0123456789", &t, 999_000).unwrap(),
            claims()
        );
        assert!(matches!(
            used.accept(b"target-token-0123456789", &t, 999_001),
            Err(TransferError::TicketReplayed)
        ));
        // Any change of a claim breaks the signature.
        let forged = t.replace(":2:", ":3:");
        assert!(matches!(
            used.accept(b"target-token-0123456789", &forged, 999_000),
            Err(TransferError::Ticket(_))
        ));
        for bad in ["", "berth-ticket-v1:a:b", &t.replace("/var/log", "/var/../log")] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
