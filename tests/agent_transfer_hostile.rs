//! Hostile transfer streams sent straight to a target agent's `POST /v1/incoming` (no real
//! source): escaping names, writes through links, links out of the volume, special files, lies
//! about sizes and counts, truncation, and bad tickets. Each is refused, and nothing changes
//! outside the transfer's staging area (run as root, on real directories).

mod support_agent;

use std::path::Path;

use berth::agent::{
    api::{ErrorBody, ReceiveResult},
    credentials,
    manifest::FileHasher,
    transfer::wire::{self, Begin, Put},
};
use support_agent::{migration::*, *};

/// Records of a stream, framed by [`Records::stream`].
#[derive(Default)]
struct Records(Vec<u8>);

impl Records {
    fn begin(mut self, id: &str, pass: u32, estimated_bytes: u64) -> Self {
        wire::put_begin(
            &mut self.0,
            &Begin {
                transfer_id: id.into(),
                pass,
                delta: false,
                base: 0,
                identity: UID.into(),
                file: false,
                estimated_bytes,
            },
        );
        self
    }
    fn dir(mut self, rel: &[u8]) -> Self {
        self.0.u8(wire::T_DIR);
        self.0.bytes32(rel);
        self.0.u16(0o755);
        self.0.id(Some(0));
        self.0.id(Some(0));
        self.0.time((1_700_000_000, 0));
        self
    }
    /// A file of `size` bytes with `data` at offset 0 and the digest of what is sent (or `digest`).
    fn file(mut self, rel: &[u8], size: u64, data: &[u8], digest: Option<[u8; 32]>) -> Self {
        self.0.u8(wire::T_FILE);
        self.0.bytes32(rel);
        self.0.u16(0o644);
        self.0.id(Some(1000));
        self.0.id(Some(1000));
        self.0.time((1_700_000_000, 0));
        self.0.u64(size);
        self.0.u8(1);
        let mut h = FileHasher::new(size);
        if !data.is_empty() {
            self.0.u8(wire::T_CHUNK);
            self.0.u64(0);
            self.0.bytes32(data);
            let _ = h.feed(0, data);
        }
        self.0.u8(wire::T_FILE_END);
        self.0.extend_from_slice(&digest.unwrap_or_else(|| h.finish()));
        self
    }
    fn symlink(mut self, rel: &[u8], target: &[u8]) -> Self {
        self.0.u8(wire::T_SYMLINK);
        self.0.bytes32(rel);
        self.0.bytes16(target);
        self.0.id(Some(0));
        self.0.id(Some(0));
        self.0.time((1_700_000_000, 0));
        self
    }
    fn hardlink(mut self, rel: &[u8], first: &[u8]) -> Self {
        self.0.u8(wire::T_HARDLINK);
        self.0.bytes32(rel);
        self.0.bytes32(first);
        self
    }
    fn raw(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }
    fn end(mut self, entries: u64, data: u64) -> Self {
        self.0.u8(wire::T_END);
        self.0.u64(entries);
        self.0.u64(data);
        self.0.u64(0);
        self
    }
    /// The wire form: magic, then raw frames.
    fn stream(&self) -> Vec<u8> {
        let mut out = wire::MAGIC.to_vec();
        for part in self.0.chunks(wire::FRAME_TARGET) {
            out.push(0);
            out.extend_from_slice(&(part.len() as u32).to_le_bytes());
            out.extend_from_slice(&(part.len() as u32).to_le_bytes());
            out.extend_from_slice(part);
        }
        out
    }
}

struct Target {
    host: Host,
    http: reqwest::Client,
}

impl Target {
    fn ticket(&self, id: &str, ttl_from_now: i64) -> String {
        let mut c = claims(id, 1, "toto", "/data", 600);
        c.expires_at = (c.expires_at as i64 - 600 + ttl_from_now) as u64;
        credentials::transfer_ticket(&self.host.token, &c)
    }

    async fn post(&self, auth: Option<String>, body: Vec<u8>) -> (u16, String, String) {
        let mut r = self
            .http
            .post(format!("{}/v1/incoming", self.host.server.url()))
            .body(body);
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let code = serde_json::from_str::<ErrorBody>(&text)
            .map(|b| b.error.code)
            .unwrap_or_default();
        (status, code, text)
    }

    async fn send(&self, id: &str, records: &Records) -> (u16, String, String) {
        let auth = format!("Berth-Ticket {}", self.ticket(id, 600));
        self.post(Some(auth), records.stream()).await
    }
}

/// Everything below the tenant root except the staging area.
fn outside_staging(root: &Path) -> Snapshot {
    let mut s = snapshot(root);
    s.retain(|p, _| !p.starts_with(root.join(".berth-staging")));
    s
}

#[tokio::test]
async fn hostile_streams_are_refused_and_write_nothing_outside_the_staging_area() {
    let t = Target {
        host: Host::new("node-2", 231072).await,
        http: reqwest::Client::new(),
    };
    let root = t.host.env.tenant_root("toto");
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::write(root.join("data/existing"), b"the target's own").unwrap();
    let decoy = t.host.env.snapshot_decoy();
    let before = outside_staging(&root);
    let shadow = t.host.env.decoy.join("etc/shadow");
    let decoy_etc = t.host.env.decoy.join("etc");
    let decoy_etc = decoy_etc.as_os_str().as_encoded_bytes();

    let r = |id: &str| Records::default().begin(id, 1, 0).dir(b"");
    let cases: Vec<(&str, Records, u16, &str)> = vec![
        (
            "dotdot",
            r("h-1").file(b"../escape", 3, b"bad", None).end(2, 3),
            400,
            "invalid_stream",
        ),
        (
            "deep dotdot",
            r("h-2")
                .dir(b"a")
                .file(b"a/../../../escape", 3, b"bad", None)
                .end(3, 3),
            400,
            "invalid_stream",
        ),
        (
            "absolute",
            r("h-3").file(b"/etc/escape", 3, b"bad", None).end(2, 3),
            400,
            "invalid_stream",
        ),
        (
            "NUL",
            r("h-4").file(b"a\0b", 3, b"bad", None).end(2, 3),
            400,
            "invalid_stream",
        ),
        (
            "write through a symlink",
            r("h-5")
                .symlink(b"l", decoy_etc)
                .file(b"l/planted", 5, b"owned", None)
                .end(3, 5),
            400,
            "invalid_stream",
        ),
        (
            "a directory through a symlink",
            r("h-6").symlink(b"l", b"/").dir(b"l/tmp").end(3, 0),
            400,
            "invalid_stream",
        ),
        (
            "hard link to a file outside",
            r("h-7")
                .hardlink(b"h", shadow.as_os_str().as_encoded_bytes())
                .end(2, 0),
            400,
            "invalid_stream",
        ),
        (
            "hard link through a symlink",
            r("h-8")
                .symlink(b"l", decoy_etc)
                .hardlink(b"h", b"l/shadow")
                .end(3, 0),
            400,
            "invalid_stream",
        ),
        (
            "hard link to the target's own data",
            r("h-9").hardlink(b"h", b"../../data/existing").end(2, 0),
            400,
            "invalid_stream",
        ),
        (
            "a device node",
            r("h-10").raw(&[11]).end(1, 0),
            400,
            "invalid_stream",
        ),
        ("a FIFO", r("h-11").raw(&[9]).end(1, 0), 400, "invalid_stream"),
        (
            "an unknown record",
            r("h-12").raw(&[0x42]).end(1, 0),
            400,
            "invalid_stream",
        ),
        (
            "data past the declared size",
            r("h-13").file(b"f", 10, &[7u8; 65536], None).end(2, 65536),
            400,
            "invalid_stream",
        ),
        (
            "a digest that does not match",
            r("h-14").file(b"f", 3, b"abc", Some([0; 32])).end(2, 3),
            400,
            "invalid_stream",
        ),
        (
            "counts that do not add up",
            r("h-15").file(b"f", 3, b"abc", None).end(7, 3),
            400,
            "invalid_stream",
        ),
        (
            "truncated (no end record)",
            r("h-16").file(b"f", 3, b"abc", None),
            400,
            "invalid_stream",
        ),
        (
            "an oversize claim",
            Records::default()
                .begin("h-17", 1, u64::MAX / 2)
                .dir(b"")
                .end(1, 0),
            507,
            "insufficient_space",
        ),
        (
            "another transfer's id than the ticket's",
            Records::default().begin("someone-else", 1, 0).dir(b"").end(1, 0),
            400,
            "invalid_stream",
        ),
        (
            "data after the end record",
            r("h-19").raw(&[]).end(1, 0).raw(b"trailing"),
            400,
            "invalid_stream",
        ),
    ];
    for (what, records, status, code) in &cases {
        let id = match what {
            &"another transfer's id than the ticket's" => "h-18",
            _ => std::str::from_utf8(&records.0[5..5 + usize::from(records.0[3])]).unwrap(),
        };
        let (got, got_code, text) = t.send(id, records).await;
        assert_eq!((got, got_code.as_str()), (*status, *code), "{what}: {text}");
    }
    // Cut in the middle of a frame, too.
    let mut cut = r("h-20").file(b"f", 3, b"abc", None).end(2, 3).stream();
    cut.truncate(cut.len() - 5);
    let (status, code, text) = t
        .post(Some(format!("Berth-Ticket {}", t.ticket("h-20", 600))), cut)
        .await;
    assert_eq!((status, code.as_str()), (400, "invalid_stream"), "{text}");

    assert_unchanged(&decoy, &t.host.env.decoy);
    assert_eq!(
        outside_staging(&root),
        before,
        "something changed outside the staging area"
    );
    assert!(!root.join("escape").exists() && !t.host.env.base.join("escape").exists());
}

#[tokio::test]
async fn only_a_fresh_ticket_signed_with_the_targets_token_opens_the_stream() {
    let t = Target {
        host: Host::new("node-2", 231072).await,
        http: reqwest::Client::new(),
    };
    let root = t.host.env.tenant_root("toto");
    let good = Records::default()
        .begin("t-1", 1, 0)
        .dir(b"")
        .file(b"f", 3, b"abc", None)
        .end(2, 3);
    let stream = good.stream();
    // No ticket, the bearer token of this or another host, a ticket of another host.
    let other = Host::new("node-3", 300000).await;
    let c = claims("t-1", 1, "toto", "/data", 600);
    let foreign = credentials::transfer_ticket(&other.token, &c);
    for (what, auth) in [
        ("no header", None),
        (
            "this host's bearer token",
            Some(format!("Bearer {}", t.host.token)),
        ),
        ("another host's token", Some(format!("Bearer {}", other.token))),
        (
            "a ticket signed by another host's token",
            Some(format!("Berth-Ticket {foreign}")),
        ),
        (
            "a ticket as a bearer token",
            Some(format!("Bearer {}", t.ticket("t-1", 600))),
        ),
        ("garbage", Some("Berth-Ticket berth-ticket-v1:x".to_owned())),
    ] {
        let (status, code, text) = t.post(auth, stream.clone()).await;
        assert_eq!((status, code.as_str()), (401, "invalid_ticket"), "{what}: {text}");
    }
    // Expired.
    let (status, code, text) = t
        .post(
            Some(format!("Berth-Ticket {}", t.ticket("t-1", -1))),
            stream.clone(),
        )
        .await;
    assert_eq!((status, code.as_str()), (401, "ticket_expired"), "{text}");
    // A ticket whose claims were edited (another path): its signature no longer holds.
    let edited = t.ticket("t-1", 600).replace("/data", "/elsewhere");
    let (status, code, _) = t
        .post(Some(format!("Berth-Ticket {edited}")), stream.clone())
        .await;
    assert_eq!((status, code.as_str()), (401, "invalid_ticket"));
    assert!(!root.join(".berth-staging/t-1").exists(), "nothing was staged");
    // The right ticket works once; replaying it is refused.
    let ticket = format!("Berth-Ticket {}", t.ticket("t-1", 600));
    let (status, _, text) = t.post(Some(ticket.clone()), stream.clone()).await;
    assert_eq!(status, 200, "{text}");
    let done: ReceiveResult = serde_json::from_str(&text).unwrap();
    assert_eq!((done.entries, done.data_bytes), (2, 3));
    assert_eq!(
        std::fs::read(root.join(".berth-staging/t-1/data/f")).unwrap(),
        b"abc"
    );
    let (status, code, _) = t.post(Some(ticket), stream.clone()).await;
    assert_eq!((status, code.as_str()), (409, "ticket_replayed"));
    // A new ticket for a pass at or below the last complete one is refused too (after a restart
    // the remembered tickets are gone, the staging area's state is not).
    let (status, code, _) = t.send("t-1", &good).await;
    assert_eq!((status, code.as_str()), (409, "ticket_replayed"));
    // The staging area cannot be reached by any volume.
    let e = t
        .host
        .client
        .inspect("toto", "/.berth-staging/t-1/data")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("invalid_request"), "{e}");
}
