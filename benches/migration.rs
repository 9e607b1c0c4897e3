//! Moving a volume between two agents (in one process, over HTTP on 127.0.0.1), against
//! `rsync -a` between the same roots. Run as root: `cargo bench --bench migration` runs it all
//! with its own clock; `scripts/bench-migration` times the `copy` command against rsync with
//! `farm-bench --vs` (whole processes, paired runs).
//!
//! ```text
//! migration                         everything below, in a temp dir (BENCH_DIR to move it)
//! migration gen-large DIR           2 GiB in 4 files of 512 MiB (incompressible)
//! migration gen-small DIR N         N small files (1-8 KiB of text) in N/100 directories
//! migration copy SRC_BASE DST_BASE  one full pass of SRC_BASE/user-bench/data into a new root
//!                                   below DST_BASE (BENCH_CLEAN=1: DST_BASE is emptied first),
//!                                   then the target's commit (syncs, reads the copy back and
//!                                   checks it against the source's manifest)
//! migration final DIR               1 GiB in 1024 files; a live pass; 10 files change; the
//!                                   final pass and commit are timed (the app's downtime)
//! migration manifest SRC_BASE       the manifest of SRC_BASE/user-bench/data (the commit's
//!                                   re-read), read by the walk alone and with readers beside it
//! ```

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use berth::agent::{
    Agent, AgentConfig, Token,
    api::{
        CommitRequest, Compression, EnsureVolumeRequest, IdentityCheck, TransferRequest, TransferState,
        TransferStatus, TransferTarget, VolumeType,
    },
    client::{AgentClient, AgentClientOptions},
    credentials,
    identity::{Expect, VolumeIdentity},
    remap::IdMap,
    server,
    transfer::TicketClaims,
};

const UID: &str = "bench-0000-0000-0000-000000000001";

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("migration bench: {what}: {e}");
    std::process::exit(1)
}

fn pattern(buf: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(6364136223846793005) | 1;
    for w in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        w.copy_from_slice(&b[..w.len()]);
    }
}

fn volume(base: &Path) -> PathBuf {
    base.join("user-bench/data")
}

fn gen_large(base: &Path) {
    let dir = volume(base);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| fail("mkdir", e));
    let mut chunk = vec![0u8; 1 << 20];
    for f in 0..4u64 {
        use std::io::Write;
        let mut out =
            std::fs::File::create(dir.join(format!("large-{f}.bin"))).unwrap_or_else(|e| fail("create", e));
        for i in 0..512u64 {
            pattern(&mut chunk, f * 1000 + i + 1);
            out.write_all(&chunk).unwrap_or_else(|e| fail("write", e));
        }
    }
}

fn gen_small(base: &Path, n: usize) {
    let dir = volume(base);
    let words = [
        "alpha ",
        "beta ",
        "gamma ",
        "delta ",
        "log line ",
        "value=42 ",
        "ok\n",
    ];
    for i in 0..n {
        let d = dir.join(format!("d{:04}", i / 100));
        if i % 100 == 0 {
            std::fs::create_dir_all(&d).unwrap_or_else(|e| fail("mkdir", e));
        }
        let len = 1024 + (i * 7919) % 7168;
        let mut s = String::with_capacity(len + 16);
        let mut k = i;
        while s.len() < len {
            s.push_str(words[k % words.len()]);
            k = k.wrapping_mul(31).wrapping_add(7);
        }
        std::fs::write(d.join(format!("f{i}.txt")), s).unwrap_or_else(|e| fail("write", e));
    }
}

struct Pair {
    source: AgentClient,
    target: AgentClient,
    target_url: String,
    _stops: Vec<tokio::sync::oneshot::Sender<()>>,
}

const SOURCE_TOKEN: &str = "bench-source-token-0123456789";
const TARGET_TOKEN: &str = "bench-target-token-0123456789";

async fn serve(base: &Path, start: u32, token: &str) -> (String, tokio::sync::oneshot::Sender<()>) {
    let map = IdMap::from_host_ranges("bench", &[(start, 65536)]).unwrap_or_else(|e| fail("range", e));
    let agent = Arc::new(
        Agent::new(AgentConfig {
            root_template: format!("{}/user-{{tenant}}", base.display()),
            hostname: "bench".into(),
            uid_map: map.clone(),
            gid_map: map,
            remap_source: "bench".into(),
            ..Default::default()
        })
        .unwrap_or_else(|e| fail("agent", e)),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| fail("bind", e));
    let url = format!(
        "http://{}",
        listener.local_addr().unwrap_or_else(|e| fail("addr", e))
    );
    let router = server::router(agent, Token::new(token).unwrap_or_else(|e| fail("token", e)));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = server::serve(listener, router, None, async {
            let _ = rx.await;
        })
        .await;
    });
    (url, tx)
}

async fn pair(src: &Path, dst: &Path) -> Pair {
    berth::tls::install_crypto_provider();
    let (su, s1) = serve(src, 165536, SOURCE_TOKEN).await;
    let (tu, s2) = serve(dst, 231072, TARGET_TOKEN).await;
    let opts = AgentClientOptions::default();
    Pair {
        source: AgentClient::new(&su, SOURCE_TOKEN, &opts).unwrap_or_else(|e| fail("client", e)),
        target: AgentClient::new(&tu, TARGET_TOKEN, &opts).unwrap_or_else(|e| fail("client", e)),
        target_url: tu,
        _stops: vec![s1, s2],
    }
}

fn vol_req() -> EnsureVolumeRequest {
    EnsureVolumeRequest {
        tenant: "bench".into(),
        host_path: "/data".into(),
        volume_type: VolumeType::Directory,
        owner: None,
        permissions: None,
        seed: None,
    }
}

fn check(expect: Expect) -> IdentityCheck {
    IdentityCheck {
        identity: Some(VolumeIdentity::parse(UID).unwrap_or_else(|e| fail("uid", e))),
        expect: Some(expect),
    }
}

impl Pair {
    async fn prepare(&self) {
        self.source
            .ensure_volume_checked(&vol_req(), &check(Expect::AdoptUnstamped))
            .await
            .unwrap_or_else(|e| fail("ensure on the source", e));
        self.target
            .ensure_volume_checked(&vol_req(), &check(Expect::New))
            .await
            .unwrap_or_else(|e| fail("ensure on the target", e));
    }

    async fn pass(&self, id: &str, pass: u32, compression: Compression) -> TransferStatus {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = TicketClaims {
            transfer_id: id.into(),
            pass,
            tenant: "bench".into(),
            host_path: "/data".into(),
            identity: UID.into(),
            expires_at: now + 3600,
        };
        let req = TransferRequest {
            id: id.into(),
            tenant: "bench".into(),
            host_path: "/data".into(),
            identity: VolumeIdentity::parse(UID).unwrap_or_else(|e| fail("uid", e)),
            pass,
            full: false,
            compression,
            target: TransferTarget {
                url: self.target_url.clone(),
                ticket: credentials::transfer_ticket(TARGET_TOKEN, &claims),
            },
        };
        self.source
            .start_transfer(&req)
            .await
            .unwrap_or_else(|e| fail("start", e));
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let s = self
                .source
                .transfer_status(id)
                .await
                .unwrap_or_else(|e| fail("status", e))
                .unwrap_or_else(|| fail("status", "unknown transfer"));
            match s.state {
                TransferState::Succeeded => return s,
                TransferState::Queued | TransferState::Running => {}
                _ => fail("transfer", format!("{s:?}")),
            }
        }
    }

    async fn commit(&self, id: &str, digest: &str) {
        let req = CommitRequest {
            tenant: "bench".into(),
            host_path: "/data".into(),
            identity: VolumeIdentity::parse(UID).unwrap_or_else(|e| fail("uid", e)),
            manifest: digest.to_owned(),
        };
        let done = self
            .target
            .commit(id, &req)
            .await
            .unwrap_or_else(|e| fail("commit", e));
        if done.manifest.digest != digest {
            fail("commit", "the manifests differ");
        }
    }
}

/// One full pass and the commit into a new target root below `dst` (ext4 skips the inodes of
/// files deleted within the last minutes when it allocates new ones, which makes creating many
/// files right after deleting many slow: every copy, berth's and rsync's, goes to a fresh
/// directory, removed only after the measurements); returns (pass, commit) times and the status.
async fn copy(src: &Path, dst: &Path, compression: Compression) -> (Duration, Duration, TransferStatus) {
    static RUN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let run = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dst = &dst.join(format!("run-{}-{run}", std::process::id()));
    std::fs::create_dir_all(dst).unwrap_or_else(|e| fail("mkdir", e));
    let p = pair(src, dst).await;
    p.prepare().await;
    let t0 = Instant::now();
    let s = p.pass("bench-copy", 1, compression).await;
    let t1 = Instant::now();
    let digest = s.manifest.clone().map(|m| m.digest).unwrap_or_default();
    p.commit("bench-copy", &digest).await;
    (t1 - t0, t1.elapsed(), s)
}

fn rsync(src: &Path, dst: &Path) -> Duration {
    let t = Instant::now();
    let st = Command::new("rsync")
        .arg("-a")
        .arg(format!("{}/", volume(src).display()))
        .arg(format!("{}/", dst.display()))
        .status()
        .unwrap_or_else(|e| fail("rsync (install Debian's rsync)", e));
    if !st.success() {
        fail("rsync", st);
    }
    t.elapsed()
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

async fn throughput(name: &str, dir: &Path, bytes: u64, files: u64) {
    let (src, dst) = (dir.join("src"), dir.join("dst"));
    // Many files: every copy stays until the end (see `copy`); a few big ones: removed at once.
    let keep = files > 1000;
    for compression in [Compression::Auto, Compression::None] {
        let (pass, commit, s) = copy(&src, &dst, compression).await;
        let total = pass + commit;
        println!(
            "{name}: berth ({compression:?}) pass {:.2} s + commit/verify {:.2} s = {:.2} s, {:.0} MiB/s, {:.0} files/s, wire {:.0} MiB of {:.0} MiB",
            pass.as_secs_f64(),
            commit.as_secs_f64(),
            total.as_secs_f64(),
            mib_s(bytes, total),
            files as f64 / total.as_secs_f64(),
            s.wire_bytes as f64 / (1 << 20) as f64,
            s.raw_bytes as f64 / (1 << 20) as f64,
        );
        if !keep {
            let _ = std::fs::remove_dir_all(&dst);
        }
    }
    let r = rsync(&src, &dir.join("rsync"));
    println!(
        "{name}: rsync -a {:.2} s, {:.0} MiB/s, {:.0} files/s (no verification)",
        r.as_secs_f64(),
        mib_s(bytes, r),
        files as f64 / r.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(dir.join("rsync"));
    let _ = std::fs::remove_dir_all(dst);
}

async fn final_pass(dir: &Path) {
    let (src, dst) = (dir.join("src"), dir.join("dst"));
    let data = volume(&src);
    std::fs::create_dir_all(&data).unwrap_or_else(|e| fail("mkdir", e));
    let mut chunk = vec![0u8; 1 << 20];
    for i in 0..1024u64 {
        pattern(&mut chunk, i + 7);
        std::fs::write(data.join(format!("f{i:04}")), &chunk).unwrap_or_else(|e| fail("write", e));
    }
    std::fs::create_dir_all(&dst).unwrap_or_else(|e| fail("mkdir", e));
    let p = pair(&src, &dst).await;
    p.prepare().await;
    let t = Instant::now();
    p.pass("bench-final", 1, Compression::Auto).await;
    let live = t.elapsed();
    let rsync_dst = dir.join("rsync");
    let r1 = rsync(&src, &rsync_dst);
    // The app changes 10 files (64 KiB each) and adds one before it is stopped.
    let change = || {
        for i in (0..1024).step_by(103) {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(data.join(format!("f{i:04}")))
                .unwrap_or_else(|e| fail("open", e));
            f.write_all_at(&[0x5a; 65536], 4096)
                .unwrap_or_else(|e| fail("write", e));
        }
        std::fs::write(data.join("new"), b"new").unwrap_or_else(|e| fail("write", e));
    };
    change();
    let t = Instant::now();
    let s = p.pass("bench-final", 2, Compression::Auto).await;
    let last = t.elapsed();
    let t = Instant::now();
    p.commit(
        "bench-final",
        &s.manifest.clone().map(|m| m.digest).unwrap_or_default(),
    )
    .await;
    let commit = t.elapsed();
    let t = Instant::now();
    let st = Command::new("rsync")
        .arg("-a")
        .arg(format!("{}/", data.display()))
        .arg(format!("{}/", rsync_dst.display()))
        .status()
        .unwrap_or_else(|e| fail("rsync", e));
    let r2 = t.elapsed();
    if !st.success() {
        fail("rsync", st);
    }
    println!(
        "final pass, 1 GiB in 1024 files, 11 changed: berth live pass {:.2} s; final pass {:.3} s ({} entries, {} KiB on the wire); commit/verify {:.2} s; rsync -a first {:.2} s, second {:.3} s",
        live.as_secs_f64(),
        last.as_secs_f64(),
        s.entries_sent,
        s.wire_bytes / 1024,
        commit.as_secs_f64(),
        r1.as_secs_f64(),
        r2.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The commit's re-read of a copy (from the page cache, as the commit reads it), by the walk
/// alone and with 1, 2 and 4 reader threads; three runs each, best and median shown.
fn manifest_readers(base: &Path) {
    use std::os::fd::AsFd;
    let dir = rustix::fs::open(
        base.join("user-bench"),
        rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY,
        rustix::fs::Mode::empty(),
    )
    .unwrap_or_else(|e| fail("open", e));
    let map = IdMap::identity();
    let mut digest = None;
    for readers in [0, 1, 2, 4] {
        let mut times: Vec<f64> = (0..3)
            .map(|_| {
                let start = Instant::now();
                let m = berth::agent::transfer::verify::tree_manifest_with(
                    dir.as_fd(),
                    c"data",
                    &map,
                    &map,
                    false,
                    &|| false,
                    readers,
                )
                .unwrap_or_else(|e| fail("manifest", e));
                if *digest.get_or_insert_with(|| m.digest.clone()) != m.digest {
                    fail("manifest", "readers gave another digest");
                }
                start.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        println!(
            "manifest, {readers} readers: best {:.3} s, median {:.3} s",
            times[0], times[1]
        );
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail("runtime", e))
}

fn main() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("migration: run as root (the agents chown and set trusted.* attributes); skipped");
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let arg = |i: usize| {
        PathBuf::from(
            args.get(i)
                .cloned()
                .unwrap_or_else(|| fail("usage", "see benches/migration.rs")),
        )
    };
    match args.first().map(String::as_str) {
        Some("gen-large") => gen_large(&arg(1)),
        Some("gen-small") => gen_small(
            &arg(1),
            args.get(2).and_then(|n| n.parse().ok()).unwrap_or(100_000),
        ),
        Some("copy") => {
            let compression = match std::env::var("BENCH_COMPRESSION").as_deref() {
                Ok("none") => Compression::None,
                Ok("zstd") => Compression::Zstd,
                _ => Compression::Auto,
            };
            if std::env::var_os("BENCH_CLEAN").is_some() {
                // Few big files: the copies of earlier runs go first (the timing includes it).
                let _ = std::fs::remove_dir_all(arg(2));
            }
            let (pass, commit, _) = runtime().block_on(copy(&arg(1), &arg(2), compression));
            println!(
                "pass {:.3} s, commit {:.3} s",
                pass.as_secs_f64(),
                commit.as_secs_f64()
            );
        }
        Some("final") => runtime().block_on(final_pass(&arg(1))),
        Some("manifest") => manifest_readers(&arg(1)),
        Some(other) => fail("usage", format!("unknown command {other}")),
        None => {
            let base = std::env::var("BENCH_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| std::env::temp_dir());
            let dir = base.join(format!("berth-bench-migration-{}", std::process::id()));
            let rt = runtime();
            gen_large(&dir.join("large/src"));
            rt.block_on(throughput("2 GiB in 4 files", &dir.join("large"), 2 << 30, 4));
            let _ = std::fs::remove_dir_all(dir.join("large"));
            gen_small(&dir.join("small/src"), 100_000);
            let bytes = std::process::Command::new("du")
                .args(["-sb"])
                .arg(volume(&dir.join("small/src")))
                .output()
                .ok()
                .and_then(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .split_whitespace()
                        .next()?
                        .parse()
                        .ok()
                })
                .unwrap_or(0u64);
            rt.block_on(throughput(
                "100,000 small files",
                &dir.join("small"),
                bytes,
                100_000,
            ));
            let _ = std::fs::remove_dir_all(dir.join("small"));
            rt.block_on(final_pass(&dir.join("final")));
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
