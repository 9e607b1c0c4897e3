//! Contents of a new file volume: literal bytes, or an allowlisted host file.

use std::{io::Read, path::PathBuf};

use rustix::fs::OFlags;

use super::FsError;

/// What to create a new file with.
#[derive(Debug, Clone)]
pub enum SeedSource {
    Bytes(Vec<u8>),
    /// An allowlisted host file (trusted agent configuration; symlinks such as `/etc/localtime`
    /// are followed) and the largest size accepted.
    HostFile {
        path: PathBuf,
        max_bytes: u64,
    },
}

/// Reads seed bytes; a host file must be a regular file no larger than its limit.
pub(super) fn read_seed(seed: &SeedSource) -> Result<Vec<u8>, FsError> {
    match seed {
        SeedSource::Bytes(b) => Ok(b.clone()),
        SeedSource::HostFile { path, max_bytes } => {
            let shown = path.display().to_string();
            let bad = |why: String| FsError::SeedSource {
                path: shown.clone(),
                why,
            };
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags_nonblock()
                .open(path)
                .map_err(|e| bad(format!("cannot open it: {}", e.kind())))?;
            let md = file
                .metadata()
                .map_err(|e| bad(format!("cannot stat it: {}", e.kind())))?;
            if !md.is_file() {
                return Err(bad("it is not a regular file".into()));
            }
            if md.len() > *max_bytes {
                return Err(bad(format!(
                    "it is {} bytes, more than the {max_bytes}-byte limit",
                    md.len()
                )));
            }
            let mut buf = Vec::with_capacity(md.len() as usize);
            file.take(*max_bytes + 1)
                .read_to_end(&mut buf)
                .map_err(|e| bad(format!("cannot read it: {}", e.kind())))?;
            if buf.len() as u64 > *max_bytes {
                return Err(bad(format!("it grew past the {max_bytes}-byte limit")));
            }
            Ok(buf)
        }
    }
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        // Never block on a FIFO that an admin mistakenly allowlisted.
        self.custom_flags((OFlags::NONBLOCK | OFlags::NOCTTY).bits() as i32)
    }
}
