//! XFS project quotas: a project id per directory volume, set on the volume's directory with
//! `FS_IOC_FSSETXATTR` (`fsx_projid` + `FS_XFLAG_PROJINHERIT`, so everything created below
//! inherits it), and a limit per project with `quotactl_fd(QCMD(Q_SETQUOTA, PRJQUOTA))`.
//!
//! The kernel of berth's CI has no quota support for XFS, so only the encoding (opcodes, struct
//! layouts, units) is tested, against the values of the C headers; see `docs/agent.md`.

use std::os::fd::{AsRawFd, BorrowedFd};

use rustix::{
    io::Errno,
    ioctl::{Getter, Opcode, Updater, ioctl, opcode},
};

/// `statfs` `f_type` of XFS.
pub const SUPER_MAGIC: u64 = 0x5846_5342;
/// `PRJQUOTA` of `linux/quota.h` (libc does not define it).
pub const PRJQUOTA: u32 = 2;
pub const Q_GETQUOTA: u32 = 0x80_0007;
pub const Q_SETQUOTA: u32 = 0x80_0008;
/// `Q_XGETQSTATV` = `XQM_CMD(8)`: XFS quota state, versioned.
pub const Q_XGETQSTATV: u32 = (b'X' as u32) << 8 | 8;
/// `QIF_BLIMITS`: the request sets the block limits (and nothing else).
pub const QIF_BLIMITS: u32 = 1;
/// Quota block size of `if_dqblk` limits: 1 KiB (`QIF_DQBLKSIZE`).
pub const QUOTA_BLOCK: u64 = 1024;
pub const FS_XFLAG_PROJINHERIT: u32 = 0x200;
const FS_QUOTA_PDQ_ACCT: u16 = 1 << 4;
const FS_QUOTA_PDQ_ENFD: u16 = 1 << 5;
const FS_QSTATV_VERSION1: i8 = 1;
/// `quotactl_fd(2)` (Linux 5.14), the same number on x86_64 and aarch64; no libc wrapper.
pub const SYS_QUOTACTL_FD: libc::c_long = 443;

/// `struct fsxattr` (`linux/fs.h`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FsXattr {
    pub xflags: u32,
    pub extsize: u32,
    pub nextents: u32,
    pub projid: u32,
    pub cowextsize: u32,
    pub pad: [u8; 8],
}

/// `struct if_dqblk` (`linux/quota.h`): limits in 1 KiB blocks, usage in bytes.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IfDqblk {
    pub bhardlimit: u64,
    pub bsoftlimit: u64,
    pub curspace: u64,
    pub ihardlimit: u64,
    pub isoftlimit: u64,
    pub curinodes: u64,
    pub btime: u64,
    pub itime: u64,
    pub valid: u32,
}

/// `struct fs_qfilestatv` (`linux/dqblk_xfs.h`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct FsQfilestatv {
    pub ino: u64,
    pub nblks: u64,
    pub nextents: u32,
    pub pad: u32,
}

/// `struct fs_quota_statv` (`linux/dqblk_xfs.h`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct FsQuotaStatv {
    pub version: i8,
    pub pad1: u8,
    pub flags: u16,
    pub incoredqs: u32,
    pub uquota: FsQfilestatv,
    pub gquota: FsQfilestatv,
    pub pquota: FsQfilestatv,
    pub btimelimit: i32,
    pub itimelimit: i32,
    pub rtbtimelimit: i32,
    pub bwarnlimit: u16,
    pub iwarnlimit: u16,
    pub rtbwarnlimit: u16,
    pub pad3: u16,
    pub pad4: u32,
    pub pad2: [u64; 7],
}

pub const FS_IOC_FSGETXATTR: Opcode = opcode::read::<FsXattr>(b'X', 31);
pub const FS_IOC_FSSETXATTR: Opcode = opcode::write::<FsXattr>(b'X', 32);

/// `QCMD(cmd, type)`.
pub const fn qcmd(cmd: u32, kind: u32) -> u32 {
    (cmd << 8) | (kind & 0xff)
}

/// The `if_dqblk` that sets a project's block limits (soft = hard) to `bytes` rounded up to
/// whole KiB, or removes them (`None`: 0 means no limit).
pub fn limit_block(bytes: Option<u64>) -> IfDqblk {
    let blocks = bytes.map_or(0, |b| b.div_ceil(QUOTA_BLOCK));
    IfDqblk {
        bhardlimit: blocks,
        bsoftlimit: blocks,
        valid: QIF_BLIMITS,
        ..IfDqblk::default()
    }
}

/// The project id and flags of the inode `fd` (a real fd: `O_PATH` fds refuse ioctls).
pub fn get_project(fd: BorrowedFd<'_>) -> Result<FsXattr, Errno> {
    // SAFETY: the argument is a `struct fsxattr`.
    unsafe { ioctl(fd, Getter::<FS_IOC_FSGETXATTR, FsXattr>::new()) }
}

/// Tags the directory `fd` with the project `id` and `PROJINHERIT`, keeping its other flags.
pub fn set_project(fd: BorrowedFd<'_>, id: u32) -> Result<(), Errno> {
    let mut x = get_project(fd)?;
    x.projid = id;
    x.xflags |= FS_XFLAG_PROJINHERIT;
    // SAFETY: as above; FS_IOC_FSSETXATTR only reads it.
    unsafe { ioctl(fd, Updater::<FS_IOC_FSSETXATTR, FsXattr>::new(&mut x)) }
}

fn quotactl_fd(fd: BorrowedFd<'_>, cmd: u32, id: u32, addr: *mut libc::c_void) -> Result<(), Errno> {
    // SAFETY: `addr` points to the structure `cmd` reads or writes, alive for the call.
    let r = unsafe { libc::syscall(SYS_QUOTACTL_FD, fd.as_raw_fd(), cmd, id, addr) };
    if r < 0 {
        return Err(Errno::from_raw_os_error(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        ));
    }
    Ok(())
}

/// Whether project quota accounting and enforcement are on for the filesystem of `fd`.
pub fn project_state(fd: BorrowedFd<'_>) -> Result<(bool, bool), Errno> {
    let mut st = FsQuotaStatv {
        version: FS_QSTATV_VERSION1,
        ..FsQuotaStatv::default()
    };
    quotactl_fd(fd, qcmd(Q_XGETQSTATV, PRJQUOTA), 0, (&raw mut st).cast())?;
    Ok((
        st.flags & FS_QUOTA_PDQ_ACCT != 0,
        st.flags & FS_QUOTA_PDQ_ENFD != 0,
    ))
}

/// Sets (or with `None` removes) the block limit of project `id`.
pub fn set_limit(fd: BorrowedFd<'_>, id: u32, bytes: Option<u64>) -> Result<(), Errno> {
    let mut q = limit_block(bytes);
    quotactl_fd(fd, qcmd(Q_SETQUOTA, PRJQUOTA), id, (&raw mut q).cast())
}

/// Usage and limit of project `id`: (bytes used, inodes used, limit in bytes).
pub fn get_quota(fd: BorrowedFd<'_>, id: u32) -> Result<(u64, u64, Option<u64>), Errno> {
    let mut q = IfDqblk::default();
    quotactl_fd(fd, qcmd(Q_GETQUOTA, PRJQUOTA), id, (&raw mut q).cast())?;
    let limit = (q.bhardlimit != 0).then(|| q.bhardlimit.saturating_mul(QUOTA_BLOCK));
    Ok((q.curspace, q.curinodes, limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values `linux/fs.h`, `linux/quota.h` and `linux/dqblk_xfs.h` give on x86_64 (printed by
    /// a C program).
    #[test]
    fn encoding_matches_the_kernel_headers() {
        assert_eq!(FS_IOC_FSGETXATTR as u64, 0x801c_581f);
        assert_eq!(FS_IOC_FSSETXATTR as u64, 0x401c_5820);
        assert_eq!(std::mem::size_of::<FsXattr>(), 28);
        assert_eq!(std::mem::offset_of!(FsXattr, projid), 12);
        assert_eq!(std::mem::size_of::<IfDqblk>(), 72);
        assert_eq!(std::mem::offset_of!(IfDqblk, valid), 64);
        assert_eq!(std::mem::size_of::<FsQuotaStatv>(), 160);
        assert_eq!(std::mem::offset_of!(FsQuotaStatv, flags), 2);
        assert_eq!(std::mem::offset_of!(FsQuotaStatv, pquota), 56);
        assert_eq!(qcmd(Q_SETQUOTA, PRJQUOTA), 0x8000_0802);
        assert_eq!(qcmd(Q_GETQUOTA, PRJQUOTA), 0x8000_0702);
        assert_eq!(qcmd(Q_XGETQSTATV, PRJQUOTA), 0x58_0802);
        assert_eq!(SYS_QUOTACTL_FD, 443);
    }

    #[test]
    fn limits_are_whole_kib_blocks_soft_equal_to_hard() {
        let q = limit_block(Some(10 * 1024 * 1024));
        assert_eq!(
            (q.bhardlimit, q.bsoftlimit, q.valid),
            (10 * 1024, 10 * 1024, QIF_BLIMITS)
        );
        assert_eq!((q.ihardlimit, q.isoftlimit, q.curspace), (0, 0, 0));
        // Rounded up, never down: a limit is never smaller than asked.
        assert_eq!(limit_block(Some(1025)).bhardlimit, 2);
        assert_eq!(limit_block(Some(1024)).bhardlimit, 1);
        // No limit is 0, which the kernel reads as "none".
        assert_eq!(limit_block(None).bhardlimit, 0);
        assert_eq!(limit_block(None).valid, QIF_BLIMITS);
    }
}
