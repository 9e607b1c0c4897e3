//! The container image: `scripts/image smoke` builds the repository's Dockerfile against a base
//! imported from this machine's Debian packages (no registry is reachable), with this build's
//! `berth` binary, and runs `berth --version` in it as the image's non-root user with a read-only
//! root filesystem and no capabilities (as the chart runs it).
mod support;

use std::process::Command;

#[test]
fn the_image_builds_and_runs_berth_as_non_root() {
    let out = Command::new(support::repo_root().join("scripts/image"))
        .args(["smoke", "--binary", env!("CARGO_BIN_EXE_berth")])
        .output()
        .expect("run scripts/image");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/image smoke failed:\n{stdout}\n{stderr}"
    );
    assert_eq!(
        stdout.trim(),
        format!("berth {}", env!("CARGO_PKG_VERSION")),
        "{stderr}"
    );
    assert!(stderr.contains("runs in the image as uid 65532"), "{stderr}");
}
