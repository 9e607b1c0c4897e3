//! The real `berth agent` binary as a child process: start, health, logs, peak memory, signals.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running agent; killed on drop. Its stderr goes to `log`.
pub struct AgentProc {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl AgentProc {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The agent's log, without terminal colour codes.
    pub fn log_text(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// Peak resident memory since start or since [`AgentProc::reset_peak`], in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM")
    }

    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS")
    }

    /// Resets the peak to the current resident size (`/proc/PID/clear_refs`, value 5).
    pub fn reset_peak(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5").unwrap();
    }

    pub fn signal(&self, sig: rustix::process::Signal) {
        rustix::process::kill_process(rustix::process::Pid::from_raw(self.pid()).unwrap(), sig).unwrap();
    }

    /// Waits for the process to exit (failing after `limit`, so a hang fails instead of
    /// blocking the suite); returns the status and the time it took.
    pub async fn wait_exit(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return (s, start.elapsed());
            }
            assert!(start.elapsed() < limit, "the agent did not exit within {limit:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Removes `ESC [ ... m` colour sequences.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn proc_status_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The `berth agent` command with `--listen 127.0.0.1:PORT`, the token from the environment
/// and the given arguments.
pub fn agent_command(port: u16, args: &[&OsStr]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.arg("agent")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .env("BERTH_AGENT_TOKEN", super::TOKEN)
        .env_remove("BERTH_AGENT_TOKEN_FILE")
        .stdout(Stdio::null());
    cmd
}

/// Starts `cmd` with stderr in `log` and waits until `/healthz` answers.
pub async fn start(mut cmd: Command, port: u16, log: &Path) -> AgentProc {
    cmd.stderr(std::fs::File::create(log).unwrap());
    let child = cmd.spawn().unwrap();
    let mut p = AgentProc {
        child,
        port,
        log: log.to_owned(),
    };
    wait_healthy(&mut p).await;
    p
}

/// Starts an agent with `--no-remap` on `base` (which must exist) and the given arguments.
pub async fn start_agent(base: &Path, log: &Path, extra: &[&OsStr]) -> AgentProc {
    let port = free_port();
    let template = format!("{}/user-{{tenant}}", base.display());
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("--no-remap"),
        OsStr::new("--root-template"),
        OsStr::new(&template),
    ];
    args.extend_from_slice(extra);
    start(agent_command(port, &args), port, log).await
}

pub async fn wait_healthy(p: &mut AgentProc) {
    berth::tls::install_crypto_provider();
    let start = Instant::now();
    loop {
        if let Some(status) = p.child.try_wait().unwrap() {
            panic!("the agent exited early: {status}\n{}", p.log_text());
        }
        if let Ok(r) = reqwest::get(format!("{}/healthz", p.url())).await
            && r.status() == 200
        {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "agent did not become healthy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `cmd` expecting the agent to refuse to start; returns its stderr. Fails (after killing
/// it) when it is still running after 20 s, i.e. when it started instead of refusing.
pub fn expect_refusal(mut cmd: Command) -> String {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr");
    cmd.stderr(std::fs::File::create(&log).unwrap());
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the agent started instead of refusing:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{err}");
    err
}
