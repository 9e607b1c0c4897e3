//! Ensure throughput of one agent through its HTTP API.
//!
//! `sudo cargo bench --bench agent_ensure` (root: it chowns). Knobs: `BENCH_N` (volumes, default
//! 10000), `BENCH_CONCURRENCY` (in-flight requests, default 32), `BENCH_WORKERS` (server runtime
//! threads, default 2). The client runs in the same process on its own 1-thread runtime, so it
//! competes for the same cores: the numbers are a lower bound for a dedicated agent host.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use berth::agent::{
    Agent, AgentConfig, Token,
    api::{ContainerOwner, EnsureVolumeRequest, VolumeType},
    client::{AgentClient, AgentClientOptions},
    remap::IdMap,
    server,
};

const TOKEN: &str = "bench-token-0123456789abcdef";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("agent_ensure: run as root (the agent chowns every volume); skipped");
        return;
    }
    let n = env_usize("BENCH_N", 10_000);
    let concurrency = env_usize("BENCH_CONCURRENCY", 32);
    let workers = env_usize("BENCH_WORKERS", 2);
    berth::tls::install_crypto_provider();

    let tmp = tempfile::Builder::new()
        .prefix("berth-bench")
        .tempdir()
        .expect("temp dir");
    let base = tmp.path().join("containerdata");
    std::fs::create_dir(&base).expect("create root");
    let map = IdMap::from_host_ranges("bench", &[(165536, 65536)]).expect("range");
    let agent = Arc::new(
        Agent::new(AgentConfig {
            root_template: format!("{}/user-{{tenant}}", base.display()),
            hostname: "bench".into(),
            attributes: Default::default(),
            uid_map: map.clone(),
            gid_map: map,
            remap_source: "bench".into(),
            max_seed_bytes: 1 << 20,
            ..Default::default()
        })
        .expect("agent"),
    );

    // The agent: its own runtime with `workers` threads (blocking fs work runs on its pool).
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("server runtime");
    let listener = server_rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = server::router(agent, Token::new(TOKEN).expect("token"));
    server_rt.spawn(async move {
        let _ = server::serve(listener, router, None, std::future::pending()).await;
    });

    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let client =
        AgentClient::new(&format!("http://{addr}"), TOKEN, &AgentClientOptions::default()).expect("client");

    println!(
        "agent_ensure: {n} directory volumes, {concurrency} in flight, agent runtime {workers} worker threads, {} CPUs",
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    for (label, verify) in [
        ("create (new directories)", true),
        ("converge (already exist)", false),
    ] {
        let elapsed = client_rt.block_on(run(&client, n, concurrency));
        println!(
            "  {label:<26} {n:>6} ops in {:>7.3} s = {:>8.0} ops/s",
            elapsed.as_secs_f64(),
            n as f64 / elapsed.as_secs_f64()
        );
        if verify {
            let count = count_volumes(&base.join("user-bench"));
            assert_eq!(count, n, "not every volume was created");
        }
    }
}

async fn run(client: &AgentClient, n: usize, concurrency: usize) -> Duration {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let req = EnsureVolumeRequest {
                    tenant: "bench".into(),
                    host_path: format!("/apps/app{}/data{i}", i / 100),
                    volume_type: VolumeType::Directory,
                    owner: Some(ContainerOwner { uid: 1000, gid: 1000 }),
                    permissions: Some("0750".into()),
                    seed: None,
                };
                client.ensure_volume(&req).await.expect("ensure");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    start.elapsed()
}

fn count_volumes(root: &std::path::Path) -> usize {
    let apps = root.join("apps");
    std::fs::read_dir(apps)
        .expect("read apps")
        .map(|e| {
            std::fs::read_dir(e.expect("entry").path())
                .expect("read app")
                .count()
        })
        .sum()
}
