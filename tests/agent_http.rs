//! The agent's HTTP server against hostile clients, with the real `berth agent` binary: half-sent
//! requests and idle connections, a flood of idle connections, SIGTERM during a half-sent
//! request, and a flood of unauthenticated requests in the log. Times are measured and printed;
//! the only limits asserted are far above the configured timeouts, to tell "closed" from "never".

mod support_agent;

use std::{
    ffi::OsStr,
    process::Command,
    time::{Duration, Instant},
};

use berth::agent::{
    client::{AgentClient, AgentClientOptions},
    server::ServeOptions,
};
use support_agent::{
    process::{agent_command, free_port, start, start_agent},
    *,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const HALF_HEAD: &[u8] = b"PUT /v1/volumes HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\n";

async fn connect(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port)).await.unwrap()
}

async fn half_sent(port: u16) -> TcpStream {
    let mut s = connect(port).await;
    s.write_all(HALF_HEAD).await.unwrap();
    s
}

/// Reads until the server closes the connection (EOF or reset) and returns what it sent and
/// how long it took; fails after `limit`.
async fn until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(start.elapsed()), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, start.elapsed()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the agent kept the connection open for {limit:?}"),
        }
    }
}

/// [`until_closed`], timed from `start`.
async fn closed_since(s: &mut TcpStream, start: Instant, limit: Duration) -> (Vec<u8>, Duration) {
    let (got, _) = until_closed(s, limit).await;
    (got, start.elapsed())
}

fn agent_args(args: &[&'static str]) -> Vec<&'static OsStr> {
    args.iter().map(|a| OsStr::new(*a)).collect()
}

#[tokio::test]
async fn half_sent_requests_and_idle_connections_are_closed_after_the_header_timeout() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("containerdata");
    std::fs::create_dir(&base).unwrap();
    let agent = start_agent(
        &base,
        &tmp.path().join("agent.log"),
        &agent_args(&["--header-timeout", "2s"]),
    )
    .await;
    let limit = Duration::from_secs(30);
    let start = Instant::now();
    let mut half = half_sent(agent.port).await;
    let mut idle = connect(agent.port).await;
    // A complete, authenticated head whose body never comes.
    let mut slow_body = connect(agent.port).await;
    slow_body
        .write_all(
            format!(
                "PUT /v1/volumes HTTP/1.1\r\nHost: agent\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"tenant\""
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // A keep-alive connection that goes quiet after a request.
    let mut kept = connect(agent.port).await;
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: agent\r\n\r\n")
        .await
        .unwrap();
    let ((h, half_t), (i, idle_t), (b, body_t), (k, kept_t)) = tokio::join!(
        closed_since(&mut half, start, limit),
        closed_since(&mut idle, start, limit),
        closed_since(&mut slow_body, start, limit),
        closed_since(&mut kept, start, limit)
    );
    eprintln!(
        "closed after: half-sent head {half_t:?}, idle {idle_t:?}, slow body {body_t:?}, idle keep-alive {kept_t:?} (timeout 2 s)"
    );
    // Nothing is said on those: they are closed.
    for (what, got) in [("half-sent", &h), ("idle", &i)] {
        assert!(got.is_empty(), "{what}: {}", String::from_utf8_lossy(got));
    }
    let body = String::from_utf8_lossy(&b);
    assert!(body.starts_with("HTTP/1.1 400"), "{body}");
    assert!(body.contains("invalid_request"), "{body}");
    let keep = String::from_utf8_lossy(&k);
    assert!(keep.starts_with("HTTP/1.1 200") && keep.ends_with("ok"), "{keep}");
    // The agent still serves.
    let c = AgentClient::new(&agent.url(), TOKEN, &AgentClientOptions::default()).unwrap();
    c.host_info().await.unwrap();
}

#[tokio::test]
async fn a_tls_handshake_that_never_starts_is_closed_after_the_header_timeout() {
    let env = Env::new();
    let certs = env.tmp.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    make_certs(&certs);
    let tls = berth::agent::server::load_tls(&certs.join("agent.pem"), &certs.join("agent.key")).unwrap();
    let options = ServeOptions {
        header_timeout: Duration::from_secs(1),
        ..ServeOptions::default()
    };
    let server = start_server_with(env.agent.clone(), Some(tls), options).await;
    let mut silent = connect(server.addr.port()).await;
    let (got, t) = until_closed(&mut silent, Duration::from_secs(30)).await;
    eprintln!("silent TLS client closed after {t:?} (timeout 1 s)");
    assert!(got.is_empty());
    // TLS clients are served as before.
    let ca = std::fs::read(certs.join("ca.pem")).unwrap();
    let c = AgentClient::new(
        &format!("https://127.0.0.1:{}", server.addr.port()),
        TOKEN,
        &AgentClientOptions {
            ca_pem: Some(ca),
            ..Default::default()
        },
    )
    .unwrap();
    c.host_info().await.unwrap();
}

#[tokio::test]
async fn idle_connections_do_not_starve_a_real_request() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("containerdata");
    std::fs::create_dir(&base).unwrap();
    // 256 open files at most (as a small LimitNOFILE would allow), and a header timeout far
    // longer than the test: only the connection cap can let the real request in.
    let port = free_port();
    let template = format!("{}/user-{{tenant}}", base.display());
    let inner = agent_command(
        port,
        &[
            OsStr::new("--no-remap"),
            OsStr::new("--root-template"),
            OsStr::new(&template),
            OsStr::new("--header-timeout"),
            OsStr::new("120s"),
        ],
    );
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -n 256 && exec \"$0\" \"$@\"")
        .arg(inner.get_program())
        .args(inner.get_args())
        .env("BERTH_AGENT_TOKEN", TOKEN);
    let agent = start(cmd, port, &tmp.path().join("agent.log")).await;
    // 300 connections that never send a complete request.
    let mut held = Vec::new();
    for i in 0..300 {
        held.push(if i % 2 == 0 {
            connect(port).await
        } else {
            half_sent(port).await
        });
    }
    let start = Instant::now();
    let c = AgentClient::new(
        &agent.url(),
        TOKEN,
        &AgentClientOptions {
            timeout: Duration::from_secs(60),
            ..Default::default()
        },
    )
    .unwrap();
    let info = c.host_info().await;
    let took = start.elapsed();
    let mut closed = 0;
    for s in &mut held {
        let mut b = [0u8; 64];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_millis(5), s.read(&mut b)).await {
            closed += 1;
        }
    }
    eprintln!(
        "with 300 idle connections held: the real request took {took:?}; the agent closed {closed} idle ones"
    );
    info.unwrap_or_else(|e| panic!("the real request was starved: {e}\n{}", agent.log_text()));
    assert!(closed >= 300 - 128, "only {closed} idle connections were closed");
    assert!(
        !agent.log_text().contains("Too many open files"),
        "{}",
        agent.log_text()
    );
}

#[tokio::test]
async fn sigterm_during_a_half_sent_request_exits_within_the_shutdown_bound() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("containerdata");
    std::fs::create_dir(&base).unwrap();
    let mut agent = start_agent(
        &base,
        &tmp.path().join("agent.log"),
        &agent_args(&["--header-timeout", "120s", "--shutdown-timeout", "2s"]),
    )
    .await;
    let _half = half_sent(agent.port).await;
    let _idle = connect(agent.port).await;
    // Give the agent time to take both connections in.
    tokio::time::sleep(Duration::from_millis(300)).await;
    agent.signal(rustix::process::Signal::TERM);
    let (status, took) = agent.wait_exit(Duration::from_secs(60)).await;
    eprintln!(
        "exited {took:?} after SIGTERM with a half-sent request open (bound 2 s, header timeout 120 s)"
    );
    assert!(status.success(), "{status}");
    let log = agent.log_text();
    assert!(log.contains("closing them"), "{log}");
}

#[tokio::test]
async fn requests_without_a_token_are_logged_once_per_interval_with_a_count() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("containerdata");
    std::fs::create_dir(&base).unwrap();
    let agent = start_agent(&base, &tmp.path().join("agent.log"), &[]).await;
    let http = reqwest::Client::new();
    let start = Instant::now();
    for _ in 0..200 {
        let r = http
            .get(format!("{}/v1/host", agent.url()))
            .bearer_auth("wrong-token-0123456789abcdef")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    let took = start.elapsed();
    let log = agent.log_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("without a valid bearer token"))
        .collect();
    eprintln!(
        "200 unauthenticated requests in {took:?} gave {} log line(s)",
        lines.len()
    );
    let allowed = 1 + took.as_secs() / berth::agent::server::UNAUTHORIZED_LOG_INTERVAL.as_secs();
    assert!(
        !lines.is_empty() && lines.len() as u64 <= allowed,
        "{} lines for {took:?}:\n{log}",
        lines.len()
    );
    assert!(lines[0].contains("count=1"), "{}", lines[0]);
}
