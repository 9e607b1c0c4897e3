//! One credential per host.
//!
//! With one token shared by every agent, root on any host could read it and drive every other
//! host's agent. Instead the controller holds one secret and derives each host's token as
//!
//! ```text
//! token(host) = hex(HMAC-SHA256(secret, "berth-agent-v1:" + hostname))
//! ```
//!
//! and the agent of host X is given only `token(X)`: a token stolen from X works on X alone. The
//! agent does not know the secret and needs no change to accept a derived token (it is an ordinary
//! bearer token of 64 hex digits). `hostname` is the name the controller uses for the host (what
//! Mesos reports and the agent's `--hostname`), byte for byte: no case folding, no trimming.
//!
//! `berth agent-token --secret-file F --host NAME` prints `token(NAME)` for provisioning.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

/// What is put before the hostname; the version lets a future scheme use other tokens.
pub const TOKEN_CONTEXT: &str = "berth-agent-v1:";
/// Shortest secret accepted, in bytes (after surrounding whitespace is removed).
pub const MIN_SECRET_BYTES: usize = 16;

/// Why a secret could not be used.
#[derive(Debug, Error)]
pub enum CredentialError {
    #[error("cannot read the secret file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the secret in {path} is {len} bytes; use at least {MIN_SECRET_BYTES} (generate one with `openssl rand -hex 32`)"
    )]
    TooShort { path: PathBuf, len: usize },
    #[error("--host {0:?} is not a host name: give the host's name exactly as Mesos reports it")]
    BadHost(String),
}

/// The token of `hostname`: lower-case hex of HMAC-SHA256(`secret`, `"berth-agent-v1:" + hostname`).
pub fn host_token(secret: &[u8], hostname: &str) -> String {
    let mut message = Vec::with_capacity(TOKEN_CONTEXT.len() + hostname.len());
    message.extend_from_slice(TOKEN_CONTEXT.as_bytes());
    message.extend_from_slice(hostname.as_bytes());
    hmac_sha256_hex(secret, &message)
}

fn hmac_sha256_hex(key: &[u8], message: &[u8]) -> String {
    // HMAC takes keys of any length (long keys are hashed), so this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        unreachable!("HMAC-SHA256 accepts keys of any length")
    };
    mac.update(message);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(digest.len() * 2);
    for b in digest {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A transfer ticket ([`crate::agent::transfer::ticket`]): the controller's permission for one
/// pass of one transfer into the target agent whose token is `target_token`. The controller
/// gives it to the source agent in `POST /v1/transfers`; the target checks it with its own
/// token, so the source never learns it.
pub fn transfer_ticket(target_token: &str, claims: &crate::agent::transfer::TicketClaims) -> String {
    crate::agent::transfer::ticket::mint(target_token, claims)
}

/// Reads a secret file: its bytes without surrounding whitespace (a trailing newline is
/// common), at least [`MIN_SECRET_BYTES`] long.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, CredentialError> {
    let raw = std::fs::read(path).map_err(|source| CredentialError::Read {
        path: path.to_owned(),
        source,
    })?;
    let secret = raw.trim_ascii().to_vec();
    if secret.len() < MIN_SECRET_BYTES {
        return Err(CredentialError::TooShort {
            path: path.to_owned(),
            len: secret.len(),
        });
    }
    Ok(secret)
}

/// The permission bits of `path` when group or others may read or write it (`mode & 0o077`),
/// `None` when it is private (or cannot be looked at: reading it reports that).
pub fn exposed_mode(path: &Path) -> Option<u32> {
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o077 != 0).then_some(mode)
}

/// A warning for a secret file that group or others can read, or `None`.
pub fn exposure_warning(path: &Path, what: &str) -> Option<String> {
    exposed_mode(path).map(|mode| {
        format!(
            "the {what} {} has mode {mode:04o}: group or others can read it; run `chmod 600 {}`",
            path.display(),
            path.display()
        )
    })
}

/// `berth agent-token`.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentTokenArgs {
    /// File holding the controller's agent secret (surrounding whitespace ignored).
    #[arg(long)]
    pub secret_file: PathBuf,
    /// The host's name exactly as the controller knows it (Mesos' hostname, the agent's --hostname).
    #[arg(long)]
    pub host: String,
}

/// Prints the token of one host on stdout (a warning about the secret file's mode on stderr).
pub fn run_agent_token(args: &AgentTokenArgs) -> Result<(), CredentialError> {
    let host = args.host.as_str();
    if host.is_empty() || !host.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(CredentialError::BadHost(args.host.clone()));
    }
    if let Some(w) = exposure_warning(&args.secret_file, "secret file") {
        eprintln!("warning: {w}");
    }
    let secret = read_secret(&args.secret_file)?;
    println!("{}", host_token(&secret, host));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"correct-horse-battery-staple-0123";

    #[test]
    fn known_answers_computed_with_openssl() {
        // printf 'berth-agent-v1:node-3' | openssl dgst -sha256 -hmac 'correct-horse-battery-staple-0123'
        assert_eq!(
            host_token(SECRET, "node-3"),
            "ca23c16dc79766e5e73414eb2ae3cd50f836e9d1309419783d91c7f4b1d2d3ed"
        );
        assert_eq!(
            host_token(SECRET, "node-3.example.internal"),
            "d6c2570f1c67e999986bec0357f8847c0cc905d6db4be5fad3b0e5b58a3a9df9"
        );
        assert_eq!(
            host_token(SECRET, "node-4"),
            "1755cbcf7806d6501a018a368c9ddc0c356596186bc9a01b9d1c4292c85e3358"
        );
        // RFC 4231 test case 2, for the HMAC itself.
        assert_eq!(
            hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn tokens_differ_per_host_and_secret_and_are_valid_agent_tokens() {
        let a = host_token(SECRET, "node-3");
        assert_ne!(a, host_token(SECRET, "Node-3"), "no case folding");
        assert_ne!(a, host_token(b"another-secret-0123456789", "node-3"));
        assert_eq!(a.len(), 64);
        assert!(crate::agent::Token::new(&a).is_ok());
    }

    #[test]
    fn secret_files_are_trimmed_and_must_be_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret");
        std::fs::write(&f, b"  correct-horse-battery-staple-0123\n").unwrap();
        assert_eq!(read_secret(&f).unwrap(), SECRET);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(exposed_mode(&f), Some(0o640));
        let w = exposure_warning(&f, "secret file").unwrap();
        assert!(w.contains("mode 0640") && w.contains("chmod 600"), "{w}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(exposed_mode(&f), None);
        std::fs::write(&f, b"short\n").unwrap();
        let e = read_secret(&f).unwrap_err();
        assert!(e.to_string().contains("is 5 bytes"), "{e}");
        let e = read_secret(&dir.path().join("missing")).unwrap_err();
        assert!(e.to_string().contains("cannot read the secret file"), "{e}");
    }
}
