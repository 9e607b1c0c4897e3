//! A btrfs filesystem made in a file and loop-mounted, for the capacity tests: unmounted (and
//! its loop device released) on drop, even when a test fails.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use tempfile::TempDir;

/// Runs a command and panics with its output when it fails.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e} (scripts/test installs btrfs-progs and xfsprogs)"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A loop-mounted btrfs filesystem.
pub struct LoopBtrfs {
    pub tmp: TempDir,
    pub mnt: PathBuf,
}

impl LoopBtrfs {
    /// Makes and mounts a btrfs filesystem of `mib` MiB (mount(8) sets up the loop device with
    /// autoclear, so unmounting releases it).
    pub fn new(mib: u64) -> Self {
        let (tmp, mnt) = mount_loop("mkfs.btrfs", "loop", mib);
        Self { tmp, mnt }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// `btrfs` with the mount point as last argument.
    pub fn btrfs(&self, args: &[&str]) -> String {
        let mut all: Vec<&str> = args.to_vec();
        all.push(self.mnt.to_str().unwrap());
        run("btrfs", &all)
    }

    /// The ids of the level-0 qgroups (`btrfs qgroup show`), read by the btrfs tool, not berth.
    pub fn qgroup_ids(&self) -> Vec<u64> {
        self.btrfs(&["qgroup", "show", "--raw"])
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.strip_prefix("0/")?.parse().ok())
            .collect()
    }

    /// Waits until deleted subvolumes are freed (`btrfs subvolume sync`).
    pub fn wait_for_cleaner(&self) {
        // `filesystem sync` wakes the cleaner, which otherwise waits for the commit interval.
        self.btrfs(&["filesystem", "sync"]);
        self.btrfs(&["subvolume", "sync"]);
    }

    /// Commits the filesystem, so quota accounting counts what was written.
    pub fn sync(&self) {
        let f = std::fs::File::open(&self.mnt).unwrap();
        rustix::fs::syncfs(&f).unwrap();
    }
}

impl Drop for LoopBtrfs {
    fn drop(&mut self) {
        unmount(&self.mnt);
    }
}

/// A loop-mounted XFS filesystem (this machine's kernel has no XFS quota, so it is mounted
/// without `prjquota`: project ids are kept on inodes, limits are not enforced).
pub struct LoopXfs {
    pub tmp: TempDir,
    pub mnt: PathBuf,
}

impl LoopXfs {
    /// At least 300 MiB (mkfs.xfs's smallest).
    pub fn new(mib: u64) -> Self {
        let (tmp, mnt) = mount_loop("mkfs.xfs", "loop", mib);
        Self { tmp, mnt }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// The project id of `path`, read by `xfs_io` (not by berth).
    pub fn project_of(path: &Path) -> u32 {
        let out = run("xfs_io", &["-r", "-c", "lsproj", path.to_str().unwrap()]);
        // "projid = 7"
        out.trim()
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("xfs_io lsproj printed {out:?}"))
    }
}

impl Drop for LoopXfs {
    fn drop(&mut self) {
        unmount(&self.mnt);
    }
}

/// Makes a filesystem of `mib` MiB in a file with `mkfs` and mounts it with `options` (mount(8)
/// sets up the loop device with autoclear, so unmounting releases it).
fn mount_loop(mkfs: &str, options: &str, mib: u64) -> (TempDir, PathBuf) {
    super::require_root();
    let tmp = tempfile::Builder::new().prefix("berth-loopfs").tempdir().unwrap();
    let img = tmp.path().join("fs.img");
    let mnt = tmp.path().join("mnt");
    std::fs::File::create(&img).unwrap().set_len(mib << 20).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    run(mkfs, &["-q", img.to_str().unwrap()]);
    run(
        "mount",
        &["-o", options, img.to_str().unwrap(), mnt.to_str().unwrap()],
    );
    (tmp, mnt)
}

fn unmount(mnt: &Path) {
    let mnt = mnt.to_str().unwrap_or_default();
    // Busy while an agent still holds its root fd (e.g. a server task not yet dropped): then
    // lazily, and the loop device goes when the last fd closes.
    let ok = Command::new("umount")
        .arg(mnt)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let _ = Command::new("umount").args(["-l", mnt]).status();
    }
}

/// Writes `bytes` of data to a new file in 1 MiB chunks, stopping at the first error; returns
/// how much was written and the error (a write or the final fsync).
pub fn fill(path: &Path, bytes: u64) -> (u64, Option<std::io::Error>) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5a_u8; 1 << 20];
    let mut written = 0;
    while written < bytes {
        let n = (bytes - written).min(chunk.len() as u64) as usize;
        if let Err(e) = f.write_all(&chunk[..n]) {
            return (written, Some(e));
        }
        written += n as u64;
    }
    match f.sync_all() {
        Ok(()) => (written, None),
        Err(e) => (written, Some(e)),
    }
}
