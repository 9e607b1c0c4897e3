//! btrfs subvolumes and qgroups through their ioctls (`linux/btrfs.h`), on fds only.
//!
//! A directory volume with a capacity is a subvolume; its qgroup `0/<subvolume id>` carries the
//! limit (`max_rfer`). Usage is the qgroup's `rfer` (bytes referenced), read from the quota tree
//! with `BTRFS_IOC_TREE_SEARCH`: O(1) per volume, as of the filesystem's last transaction commit.
//! Everything here works on fds the caller opened beneath the agent root without following links;
//! the only name passed to the kernel is one component, relative to a directory fd.

use std::{collections::HashMap, ffi::CStr, os::fd::BorrowedFd};

use rustix::{
    io::Errno,
    ioctl::{NoArg, Opcode, Updater, ioctl, opcode},
};

const MAGIC: u8 = 0x94;
/// `statfs` `f_type` of btrfs.
pub const SUPER_MAGIC: u64 = 0x9123_683E;
/// The inode number of every subvolume's root directory (`BTRFS_FIRST_FREE_OBJECTID`).
pub const SUBVOL_ROOT_INO: u64 = 256;
const ROOT_TREE: u64 = 1;
const QUOTA_TREE: u64 = 8;
const ROOT_REF_KEY: u32 = 156;
const QGROUP_STATUS_KEY: u32 = 240;
const QGROUP_INFO_KEY: u32 = 242;
const QGROUP_LIMIT_KEY: u32 = 244;
const QUOTA_CTL_ENABLE: u64 = 1;
/// `BTRFS_QGROUP_LIMIT_MAX_RFER`: the limit applies to bytes referenced.
pub const LIMIT_MAX_RFER: u64 = 1;
/// A limit of all ones clears it (`btrfs qgroup limit none`).
const LIMIT_CLEAR: u64 = u64::MAX;
const STATUS_ON: u64 = 1;
const STATUS_RESCAN: u64 = 1 << 1;
const STATUS_INCONSISTENT: u64 = 1 << 2;
/// Longest name a `btrfs_ioctl_vol_args` holds (`BTRFS_PATH_NAME_MAX`).
const VOL_NAME_MAX: usize = 4087;
const SEARCH_BUF: usize = 4096 - std::mem::size_of::<SearchKey>();

#[repr(C)]
pub struct VolArgs {
    pub fd: i64,
    pub name: [u8; VOL_NAME_MAX + 1],
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
pub struct SearchKey {
    pub tree_id: u64,
    pub min_objectid: u64,
    pub max_objectid: u64,
    pub min_offset: u64,
    pub max_offset: u64,
    pub min_transid: u64,
    pub max_transid: u64,
    pub min_type: u32,
    pub max_type: u32,
    pub nr_items: u32,
    pub unused: u32,
    pub unused1: u64,
    pub unused2: u64,
    pub unused3: u64,
    pub unused4: u64,
}

#[repr(C)]
pub struct SearchArgs {
    pub key: SearchKey,
    pub buf: [u8; SEARCH_BUF],
}

#[repr(C)]
pub struct InoLookupArgs {
    pub treeid: u64,
    pub objectid: u64,
    pub name: [u8; 4080],
}

#[repr(C)]
#[derive(Default)]
pub struct QuotaCtlArgs {
    pub cmd: u64,
    pub status: u64,
}

#[repr(C)]
#[derive(Default)]
pub struct QgroupCreateArgs {
    pub create: u64,
    pub qgroupid: u64,
}

#[repr(C)]
#[derive(Default, Debug, PartialEq, Eq)]
pub struct QgroupLimit {
    pub flags: u64,
    pub max_rfer: u64,
    pub max_excl: u64,
    pub rsv_rfer: u64,
    pub rsv_excl: u64,
}

#[repr(C)]
#[derive(Default, Debug, PartialEq, Eq)]
pub struct QgroupLimitArgs {
    pub qgroupid: u64,
    pub lim: QgroupLimit,
}

pub const IOC_SUBVOL_CREATE: Opcode = opcode::write::<VolArgs>(MAGIC, 14);
pub const IOC_SNAP_DESTROY: Opcode = opcode::write::<VolArgs>(MAGIC, 15);
pub const IOC_TREE_SEARCH: Opcode = opcode::read_write::<SearchArgs>(MAGIC, 17);
pub const IOC_INO_LOOKUP: Opcode = opcode::read_write::<InoLookupArgs>(MAGIC, 18);
pub const IOC_QUOTA_CTL: Opcode = opcode::read_write::<QuotaCtlArgs>(MAGIC, 40);
pub const IOC_QGROUP_CREATE: Opcode = opcode::write::<QgroupCreateArgs>(MAGIC, 42);
// The kernel declares it _IOR although it only reads the argument.
pub const IOC_QGROUP_LIMIT: Opcode = opcode::read::<QgroupLimitArgs>(MAGIC, 43);
pub const IOC_QUOTA_RESCAN_WAIT: Opcode = opcode::none(MAGIC, 46);

/// `btrfs_ioctl_vol_args` naming one component.
fn vol_args(name: &CStr) -> Result<Box<VolArgs>, Errno> {
    let bytes = name.to_bytes();
    if bytes.is_empty() || bytes.len() > VOL_NAME_MAX || bytes.contains(&b'/') {
        return Err(Errno::INVAL);
    }
    let mut args = Box::new(VolArgs {
        fd: 0,
        name: [0; VOL_NAME_MAX + 1],
    });
    args.name[..bytes.len()].copy_from_slice(bytes);
    Ok(args)
}

/// Creates the subvolume `name` in the directory `parent` (`BTRFS_IOC_SUBVOL_CREATE`):
/// `EEXIST` when the name exists, whatever it is.
pub fn create_subvolume(parent: BorrowedFd<'_>, name: &CStr) -> Result<(), Errno> {
    let mut args = vol_args(name)?;
    // SAFETY: the opcode's argument is a `btrfs_ioctl_vol_args`, which `VolArgs` mirrors.
    unsafe { ioctl(parent, Updater::<IOC_SUBVOL_CREATE, VolArgs>::new(&mut args)) }
}

/// Deletes the subvolume `name` of the directory `parent` with everything in it
/// (`BTRFS_IOC_SNAP_DESTROY`); the space is freed in the background. `EINVAL` when `name` is not
/// a subvolume.
pub fn destroy_subvolume(parent: BorrowedFd<'_>, name: &CStr) -> Result<(), Errno> {
    let mut args = vol_args(name)?;
    // SAFETY: as for `create_subvolume`.
    unsafe { ioctl(parent, Updater::<IOC_SNAP_DESTROY, VolArgs>::new(&mut args)) }
}

/// The id of the subvolume holding the inode `fd` (`BTRFS_IOC_INO_LOOKUP` of objectid 256, which
/// needs no privilege). For a subvolume's own root directory that is the subvolume itself.
pub fn subvolume_id(fd: BorrowedFd<'_>) -> Result<u64, Errno> {
    let mut args = Box::new(InoLookupArgs {
        treeid: 0,
        objectid: SUBVOL_ROOT_INO,
        name: [0; 4080],
    });
    // SAFETY: the argument is a `btrfs_ioctl_ino_lookup_args`.
    unsafe { ioctl(fd, Updater::<IOC_INO_LOOKUP, InoLookupArgs>::new(&mut args))? };
    Ok(args.treeid)
}

/// The arguments of `BTRFS_IOC_QGROUP_LIMIT` for the level-0 qgroup of `subvol`: a limit on
/// bytes referenced, or `None` to clear it.
pub fn limit_args(subvol: u64, max_rfer: Option<u64>) -> QgroupLimitArgs {
    QgroupLimitArgs {
        qgroupid: subvol,
        lim: QgroupLimit {
            flags: LIMIT_MAX_RFER,
            max_rfer: max_rfer.unwrap_or(LIMIT_CLEAR),
            ..QgroupLimit::default()
        },
    }
}

/// Sets (or with `None` clears) the limit of the qgroup `0/<subvol>`. `ENOTCONN` when quota is
/// not enabled, `ENOENT` when the qgroup does not exist.
pub fn set_limit(fs: BorrowedFd<'_>, subvol: u64, max_rfer: Option<u64>) -> Result<(), Errno> {
    let mut args = limit_args(subvol, max_rfer);
    // SAFETY: the argument is a `btrfs_ioctl_qgroup_limit_args`.
    unsafe { ioctl(fs, Updater::<IOC_QGROUP_LIMIT, QgroupLimitArgs>::new(&mut args)) }
}

/// Removes the qgroup `0/<subvol>` (`BTRFS_IOC_QGROUP_CREATE` with `create = 0`). `EBUSY` while
/// the deleted subvolume's data is still being freed; `ENOENT` once it is gone.
pub fn remove_qgroup(fs: BorrowedFd<'_>, subvol: u64) -> Result<(), Errno> {
    let mut args = QgroupCreateArgs {
        create: 0,
        qgroupid: subvol,
    };
    // SAFETY: the argument is a `btrfs_ioctl_qgroup_create_args`.
    unsafe { ioctl(fs, Updater::<IOC_QGROUP_CREATE, QgroupCreateArgs>::new(&mut args)) }
}

/// Enables quota (qgroups) on the filesystem and waits for the rescan that accounts what is
/// already there.
pub fn enable_quota(fs: BorrowedFd<'_>) -> Result<(), Errno> {
    let mut args = QuotaCtlArgs {
        cmd: QUOTA_CTL_ENABLE,
        status: 0,
    };
    // SAFETY: the argument is a `btrfs_ioctl_quota_ctl_args`.
    unsafe { ioctl(fs, Updater::<IOC_QUOTA_CTL, QuotaCtlArgs>::new(&mut args))? };
    // SAFETY: the opcode takes no argument.
    unsafe { ioctl(fs, NoArg::<IOC_QUOTA_RESCAN_WAIT>::new()) }
}

/// The state of quota accounting on a btrfs filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaStatus {
    Disabled,
    /// On, but the numbers are incomplete until a rescan finishes.
    Rescanning,
    /// On, but the numbers are known to be wrong: a rescan is needed.
    Inconsistent,
    On,
}

/// One qgroup's accounting and limit, from the quota tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Qgroup {
    /// Bytes referenced by the subvolume (shared extents included).
    pub rfer: u64,
    /// Bytes only this subvolume references.
    pub excl: u64,
    /// The limit on `rfer`, when one is set.
    pub max_rfer: Option<u64>,
}

/// One item found by `BTRFS_IOC_TREE_SEARCH`: its key and its bytes.
struct Item<'a> {
    objectid: u64,
    kind: u32,
    offset: u64,
    data: &'a [u8],
}

fn le64(data: &[u8], index: usize) -> Option<u64> {
    let b = data.get(index * 8..index * 8 + 8)?;
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

/// Calls `f` for every item of `tree` with a key between `min` and `max` (objectid, type,
/// offset, compared as one key), in key order, a buffer at a time, until `f` returns false.
fn search(
    fs: BorrowedFd<'_>,
    tree: u64,
    min: (u64, u32, u64),
    max: (u64, u32, u64),
    mut f: impl FnMut(&Item<'_>) -> bool,
) -> Result<(), Errno> {
    let mut args = Box::new(SearchArgs {
        key: SearchKey::default(),
        buf: [0; SEARCH_BUF],
    });
    let mut next = min;
    loop {
        args.key = SearchKey {
            tree_id: tree,
            min_objectid: next.0,
            max_objectid: max.0,
            min_type: next.1,
            max_type: max.1,
            min_offset: next.2,
            max_offset: max.2,
            max_transid: u64::MAX,
            nr_items: 4096,
            ..SearchKey::default()
        };
        // SAFETY: the argument is a `btrfs_ioctl_search_args`.
        unsafe { ioctl(fs, Updater::<IOC_TREE_SEARCH, SearchArgs>::new(&mut args))? };
        let found = args.key.nr_items;
        if found == 0 {
            return Ok(());
        }
        let mut at = 0usize;
        let mut last = next;
        for _ in 0..found {
            let Some(h) = args.buf.get(at..at + 32) else {
                return Err(Errno::IO);
            };
            let objectid = le64(h, 1).unwrap_or(0);
            let offset = le64(h, 2).unwrap_or(0);
            let kind = u32::from_le_bytes([h[24], h[25], h[26], h[27]]);
            let len = u32::from_le_bytes([h[28], h[29], h[30], h[31]]) as usize;
            let Some(data) = args.buf.get(at + 32..at + 32 + len) else {
                return Err(Errno::IO);
            };
            let more = f(&Item {
                objectid,
                kind,
                offset,
                data,
            });
            if !more {
                return Ok(());
            }
            last = (objectid, kind, offset);
            at += 32 + len;
        }
        // The key after the last one found.
        next = match last {
            (o, t, off) if off < u64::MAX => (o, t, off + 1),
            (o, t, _) if t < u32::MAX => (o, t + 1, 0),
            (o, _, _) if o < u64::MAX => (o + 1, 0, 0),
            _ => return Ok(()),
        };
        if next > max {
            return Ok(());
        }
    }
}

/// Whether quota is enabled on the filesystem of `fs`, and whether its numbers can be trusted
/// (the quota tree's status item; needs `CAP_SYS_ADMIN`).
pub fn quota_status(fs: BorrowedFd<'_>) -> Result<QuotaStatus, Errno> {
    let mut flags = None;
    let key = (0, QGROUP_STATUS_KEY, 0);
    match search(fs, QUOTA_TREE, key, key, |item| {
        if item.kind == QGROUP_STATUS_KEY {
            flags = le64(item.data, 2);
        }
        true
    }) {
        // No quota tree: quota was never enabled (or was disabled).
        Err(Errno::NOENT) => return Ok(QuotaStatus::Disabled),
        r => r?,
    }
    Ok(match flags {
        None => QuotaStatus::Disabled,
        Some(f) if f & STATUS_ON == 0 => QuotaStatus::Disabled,
        Some(f) if f & STATUS_INCONSISTENT != 0 => QuotaStatus::Inconsistent,
        Some(f) if f & STATUS_RESCAN != 0 => QuotaStatus::Rescanning,
        Some(_) => QuotaStatus::On,
    })
}

/// Accounting and limits of the level-0 qgroups with ids in `ids` (all of them when `None`):
/// one or a few tree searches for the whole set.
pub fn qgroups(fs: BorrowedFd<'_>, ids: Option<(u64, u64)>) -> Result<HashMap<u64, Qgroup>, Errno> {
    let (lo, hi) = ids.unwrap_or((0, (1 << 48) - 1));
    let mut out: HashMap<u64, Qgroup> = HashMap::new();
    for kind in [QGROUP_INFO_KEY, QGROUP_LIMIT_KEY] {
        let r = search(fs, QUOTA_TREE, (0, kind, lo), (0, kind, hi), |item| {
            if item.objectid != 0 || item.kind != kind {
                return true;
            }
            let q = out.entry(item.offset).or_default();
            if kind == QGROUP_INFO_KEY {
                // generation, rfer, rfer_cmpr, excl, excl_cmpr
                q.rfer = le64(item.data, 1).unwrap_or(0);
                q.excl = le64(item.data, 3).unwrap_or(0);
            } else {
                // flags, max_rfer, max_excl, rsv_rfer, rsv_excl
                let flags = le64(item.data, 0).unwrap_or(0);
                let max = le64(item.data, 1).unwrap_or(0);
                q.max_rfer = (flags & LIMIT_MAX_RFER != 0 && max != 0 && max != LIMIT_CLEAR).then_some(max);
            }
            true
        });
        match r {
            Err(Errno::NOENT) => return Ok(HashMap::new()),
            r => r?,
        }
    }
    Ok(out)
}

/// The ids of the subvolumes below `subvol` (made inside it, at any depth), at most `max`:
/// `ROOT_REF` items of the root tree.
pub fn nested_subvolumes(fs: BorrowedFd<'_>, subvol: u64, max: usize) -> Result<Vec<u64>, Errno> {
    let mut out = Vec::new();
    let mut todo = vec![subvol];
    while let Some(parent) = todo.pop() {
        let mut children = Vec::new();
        search(
            fs,
            ROOT_TREE,
            (parent, ROOT_REF_KEY, 0),
            (parent, ROOT_REF_KEY, u64::MAX),
            |item| {
                if item.objectid == parent && item.kind == ROOT_REF_KEY {
                    children.push(item.offset);
                }
                // A tenant may make any number: read no more than are reported.
                out.len() + children.len() < max
            },
        )?;
        for c in children {
            if out.len() >= max {
                return Ok(out);
            }
            out.push(c);
            todo.push(c);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values `linux/btrfs.h` gives (printed by a C program on x86_64).
    #[test]
    fn opcodes_and_layouts_match_the_kernel_header() {
        assert_eq!(IOC_SUBVOL_CREATE as u64, 0x5000_940e);
        assert_eq!(IOC_SNAP_DESTROY as u64, 0x5000_940f);
        assert_eq!(IOC_TREE_SEARCH as u64, 0xd000_9411);
        assert_eq!(IOC_INO_LOOKUP as u64, 0xd000_9412);
        assert_eq!(IOC_QUOTA_CTL as u64, 0xc010_9428);
        assert_eq!(IOC_QGROUP_CREATE as u64, 0x4010_942a);
        assert_eq!(IOC_QGROUP_LIMIT as u64, 0x8030_942b);
        assert_eq!(IOC_QUOTA_RESCAN_WAIT as u64, 0x942e);
        assert_eq!(std::mem::size_of::<VolArgs>(), 4096);
        assert_eq!(std::mem::size_of::<SearchKey>(), 104);
        assert_eq!(std::mem::size_of::<SearchArgs>(), 4096);
        assert_eq!(std::mem::size_of::<InoLookupArgs>(), 4096);
        assert_eq!(std::mem::size_of::<QgroupLimitArgs>(), 48);
    }

    #[test]
    fn a_limit_is_on_bytes_referenced_and_none_clears_it() {
        let a = limit_args(257, Some(16 << 20));
        assert_eq!((a.qgroupid, a.lim.flags, a.lim.max_rfer), (257, 1, 16 << 20));
        assert_eq!((a.lim.max_excl, a.lim.rsv_rfer, a.lim.rsv_excl), (0, 0, 0));
        assert_eq!(limit_args(257, None).lim.max_rfer, u64::MAX);
    }

    #[test]
    fn names_are_one_component() {
        assert!(vol_args(c"data").is_ok());
        assert_eq!(vol_args(c"a/b").err(), Some(Errno::INVAL));
        assert_eq!(vol_args(c"").err(), Some(Errno::INVAL));
        let long = std::ffi::CString::new(vec![b'x'; VOL_NAME_MAX + 1]).unwrap();
        assert_eq!(vol_args(&long).err(), Some(Errno::INVAL));
    }
}
