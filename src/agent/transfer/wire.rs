//! The transfer stream: frames (raw or zstd) carrying records.
//!
//! ```text
//! stream := MAGIC frame*            frame := flags:u8 raw_len:u32 enc_len:u32 bytes[enc_len]
//! records (the frames' payloads, concatenated) := Begin entry* End
//! ```
//!
//! Integers are little-endian. `flags` is 0 (raw, `enc_len == raw_len`) or 1 (zstd of exactly
//! `raw_len` bytes); `raw_len` is at most [`MAX_FRAME`]. Paths are relative to the volume,
//! `/`-separated, each name checked ([`check_path`]); ids are container ids or "unmapped".
//! There is no record for FIFOs, sockets or devices: the tags they would have are refused.

use std::io::{self, Read};

use super::TransferError;

pub const MAGIC: &[u8; 8] = b"BERTHTX1";
/// Largest frame payload (before and after compression).
pub const MAX_FRAME: usize = 1 << 20;
/// Frames are cut at about this many bytes of records.
pub const FRAME_TARGET: usize = 256 * 1024;
/// Largest data chunk of one record.
pub const MAX_CHUNK: usize = 256 * 1024;
/// Longest symlink target.
pub const MAX_LINK: usize = 4095;
/// Most components of a path, longest name.
pub const MAX_COMPONENTS: usize = super::walk::MAX_DEPTH;
pub const MAX_NAME: usize = 255;
/// Longest identity or transfer id.
const MAX_ID: usize = 64;

pub const T_BEGIN: u8 = 1;
pub const T_DIR: u8 = 2;
pub const T_FILE: u8 = 3;
pub const T_CHUNK: u8 = 4;
pub const T_FILE_END: u8 = 5;
pub const T_SYMLINK: u8 = 6;
pub const T_HARDLINK: u8 = 7;
pub const T_DELETE: u8 = 8;
/// Tags a FIFO, socket, character or block device would have: always refused.
pub const T_SPECIALS: [u8; 4] = [9, 10, 11, 12];
pub const T_END: u8 = 0x7f;

/// Record writer helpers (into a frame buffer).
pub trait Put {
    fn u8(&mut self, v: u8);
    fn u16(&mut self, v: u16);
    fn u32(&mut self, v: u32);
    fn u64(&mut self, v: u64);
    fn bytes16(&mut self, b: &[u8]);
    fn bytes32(&mut self, b: &[u8]);
    fn id(&mut self, v: Option<u32>);
    fn time(&mut self, t: (i64, u32));
}

impl Put for Vec<u8> {
    fn u8(&mut self, v: u8) {
        self.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes16(&mut self, b: &[u8]) {
        self.u16(b.len() as u16);
        self.extend_from_slice(b);
    }
    fn bytes32(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.extend_from_slice(b);
    }
    fn id(&mut self, v: Option<u32>) {
        match v {
            Some(id) => {
                self.u8(1);
                self.u32(id);
            }
            None => {
                self.u8(0);
                self.u32(0);
            }
        }
    }
    fn time(&mut self, t: (i64, u32)) {
        self.u64(t.0 as u64);
        self.u32(t.1);
    }
}

/// The stream's first record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    pub transfer_id: String,
    pub pass: u32,
    /// 0 = everything (the staging area starts empty), 1 = changes since `base`.
    pub delta: bool,
    pub base: u32,
    pub identity: String,
    /// True for a file volume.
    pub file: bool,
    /// Bytes the source expects to send (for the free-space check).
    pub estimated_bytes: u64,
}

pub fn put_begin(out: &mut Vec<u8>, b: &Begin) {
    out.u8(T_BEGIN);
    out.u16(1);
    out.bytes16(b.transfer_id.as_bytes());
    out.u32(b.pass);
    out.u8(u8::from(b.delta));
    out.u32(b.base);
    out.bytes16(b.identity.as_bytes());
    out.u8(u8::from(b.file));
    out.u64(b.estimated_bytes);
}

/// Reads frames and hands out their payloads as one byte stream, with bounded reads.
pub struct FrameReader<R: Read> {
    inner: R,
    buf: Vec<u8>,
    pos: usize,
    enc: Vec<u8>,
    zstd: zstd::bulk::Decompressor<'static>,
    /// Bytes read from the wire.
    pub wire_bytes: u64,
    started: bool,
}

impl<R: Read> FrameReader<R> {
    pub fn new(inner: R) -> Result<Self, TransferError> {
        Ok(Self {
            inner,
            buf: Vec::new(),
            pos: 0,
            enc: Vec::new(),
            zstd: zstd::bulk::Decompressor::new().map_err(|e| TransferError::Internal(e.to_string()))?,
            wire_bytes: 0,
            started: false,
        })
    }

    /// Reads the next frame; `Ok(false)` at a clean end of the stream.
    fn next_frame(&mut self) -> Result<bool, TransferError> {
        if !self.started {
            let mut magic = [0u8; 8];
            read_exact(&mut self.inner, &mut magic)?;
            if &magic != MAGIC {
                return Err(TransferError::stream(
                    "it does not start like a berth transfer stream",
                ));
            }
            self.started = true;
            self.wire_bytes += 8;
        }
        let mut head = [0u8; 9];
        let n = read_some(&mut self.inner, &mut head)?;
        if n == 0 {
            return Ok(false);
        }
        if n < head.len() {
            return Err(TransferError::stream("it ends inside a frame header (truncated)"));
        }
        let flags = head[0];
        let raw = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let enc = u32::from_le_bytes([head[5], head[6], head[7], head[8]]) as usize;
        if raw == 0 || raw > MAX_FRAME || enc == 0 || enc > MAX_FRAME {
            return Err(TransferError::stream("a frame is empty or larger than the limit"));
        }
        self.enc.resize(enc, 0);
        read_exact(&mut self.inner, &mut self.enc)?;
        self.wire_bytes += (9 + enc) as u64;
        match flags {
            0 if raw == enc => {
                std::mem::swap(&mut self.buf, &mut self.enc);
            }
            1 => {
                self.buf.clear();
                self.buf.reserve(raw);
                let got = self
                    .zstd
                    .decompress_to_buffer(&self.enc, &mut self.buf)
                    .map_err(|_| TransferError::stream("a zstd frame does not decompress"))?;
                if got != raw || self.buf.len() != raw {
                    return Err(TransferError::stream(
                        "a zstd frame decompresses to another size than it claims",
                    ));
                }
            }
            _ => {
                return Err(TransferError::stream(
                    "a frame has unknown flags or a wrong length",
                ));
            }
        }
        self.pos = 0;
        Ok(true)
    }

    /// Fills `out` from the record stream; an end inside it is a truncated stream.
    pub fn fill(&mut self, mut out: &mut [u8]) -> Result<(), TransferError> {
        while !out.is_empty() {
            if self.pos == self.buf.len() && !self.next_frame()? {
                return Err(TransferError::stream("it ends before its end record (truncated)"));
            }
            let n = out.len().min(self.buf.len() - self.pos);
            out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
            out = &mut out[n..];
        }
        Ok(())
    }

    /// True when nothing follows (checked after the end record).
    pub fn at_end(&mut self) -> Result<bool, TransferError> {
        Ok(self.pos == self.buf.len() && !self.next_frame()?)
    }

    pub fn u8(&mut self) -> Result<u8, TransferError> {
        let mut b = [0u8; 1];
        self.fill(&mut b)?;
        Ok(b[0])
    }
    pub fn u16(&mut self) -> Result<u16, TransferError> {
        let mut b = [0u8; 2];
        self.fill(&mut b)?;
        Ok(u16::from_le_bytes(b))
    }
    pub fn u32(&mut self) -> Result<u32, TransferError> {
        let mut b = [0u8; 4];
        self.fill(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    pub fn u64(&mut self) -> Result<u64, TransferError> {
        let mut b = [0u8; 8];
        self.fill(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    pub fn digest(&mut self) -> Result<[u8; 32], TransferError> {
        let mut b = [0u8; 32];
        self.fill(&mut b)?;
        Ok(b)
    }
    /// A length-prefixed (u16) byte string of at most `max` bytes.
    pub fn bytes16(&mut self, max: usize, what: &str) -> Result<Vec<u8>, TransferError> {
        let len = usize::from(self.u16()?);
        if len > max {
            return Err(TransferError::stream(&format!(
                "{what} is longer than {max} bytes"
            )));
        }
        let mut v = vec![0u8; len];
        self.fill(&mut v)?;
        Ok(v)
    }
    /// A path (u32 length), checked.
    pub fn path(&mut self) -> Result<Vec<u8>, TransferError> {
        let len = self.u32()? as usize;
        if len > MAX_COMPONENTS * (MAX_NAME + 1) {
            return Err(TransferError::stream("a path is longer than any berth sends"));
        }
        let mut v = vec![0u8; len];
        self.fill(&mut v)?;
        check_path(&v)?;
        Ok(v)
    }
    pub fn id(&mut self) -> Result<Option<u32>, TransferError> {
        let flag = self.u8()?;
        let v = self.u32()?;
        match flag {
            0 => Ok(None),
            1 => Ok(Some(v)),
            _ => Err(TransferError::stream("an owner id is malformed")),
        }
    }
    pub fn time(&mut self) -> Result<(i64, u32), TransferError> {
        let s = self.u64()? as i64;
        let ns = self.u32()?;
        if ns >= 1_000_000_000 {
            return Err(TransferError::stream("a timestamp is malformed"));
        }
        Ok((s, ns))
    }
    pub fn string(&mut self, what: &str) -> Result<String, TransferError> {
        let b = self.bytes16(MAX_ID, what)?;
        String::from_utf8(b).map_err(|_| TransferError::stream(&format!("{what} is not UTF-8")))
    }

    pub fn begin(&mut self) -> Result<Begin, TransferError> {
        if self.u8()? != T_BEGIN {
            return Err(TransferError::stream("it does not start with a begin record"));
        }
        if self.u16()? != 1 {
            return Err(TransferError::stream(
                "it has a version this agent does not read; upgrade it",
            ));
        }
        let transfer_id = self.string("the transfer id")?;
        let pass = self.u32()?;
        let delta = match self.u8()? {
            0 => false,
            1 => true,
            _ => return Err(TransferError::stream("the pass mode is unknown")),
        };
        let base = self.u32()?;
        let identity = self.string("the identity")?;
        let file = match self.u8()? {
            0 => false,
            1 => true,
            _ => return Err(TransferError::stream("the volume type is unknown")),
        };
        Ok(Begin {
            transfer_id,
            pass,
            delta,
            base,
            identity,
            file,
            estimated_bytes: self.u64()?,
        })
    }
}

fn read_some<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize, TransferError> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(TransferError::Disconnected(e.to_string())),
        }
    }
    Ok(done)
}

fn read_exact<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<(), TransferError> {
    if read_some(r, buf)? < buf.len() {
        return Err(TransferError::stream("it ends inside a frame (truncated)"));
    }
    Ok(())
}

/// A relative path as a stream may carry it: empty (the volume) or names separated by single
/// `/`, none empty, `.` or `..`, none with NUL or longer than 255 bytes, at most 256 of them.
pub fn check_path(p: &[u8]) -> Result<(), TransferError> {
    if p.is_empty() {
        return Ok(());
    }
    let mut count = 0;
    for name in p.split(|b| *b == b'/') {
        count += 1;
        let why = if name.is_empty() {
            Some("an empty name (a leading, trailing or double '/')")
        } else if name == b"." || name == b".." {
            Some("a '.' or '..' component")
        } else if name.contains(&0) {
            Some("a NUL byte")
        } else if name.len() > MAX_NAME {
            Some("a name longer than 255 bytes")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(TransferError::stream(&format!(
                "the path {} has {why}",
                crate::agent::manifest::show(p)
            )));
        }
    }
    if count > MAX_COMPONENTS {
        return Err(TransferError::stream(
            "a path has more components than berth walks",
        ));
    }
    Ok(())
}

/// Bytes of a frame header.
const HEAD: usize = 9;

/// Writes records into frames, compressing those that shrink, and hands each frame to `out`.
/// `raw` holds the frame being built: a header's room, then records.
pub struct FrameWriter<F: FnMut(Vec<u8>) -> Result<(), TransferError>> {
    pub raw: Vec<u8>,
    out: F,
    zstd: Option<zstd::bulk::Compressor<'static>>,
    /// Frames not to try compressing (`Auto`), and how many the next failure skips.
    skip: u32,
    backoff: u32,
    auto: bool,
    pub raw_bytes: u64,
    pub wire_bytes: u64,
}

fn frame_buffer() -> Vec<u8> {
    let mut v = Vec::with_capacity(HEAD + FRAME_TARGET + MAX_CHUNK + 1024);
    v.resize(HEAD, 0);
    v
}

impl<F: FnMut(Vec<u8>) -> Result<(), TransferError>> FrameWriter<F> {
    pub fn new(compression: crate::agent::api::Compression, out: F) -> Result<Self, TransferError> {
        use crate::agent::api::Compression;
        let zstd = match compression {
            Compression::None => None,
            _ => Some(zstd::bulk::Compressor::new(1).map_err(|e| TransferError::Internal(e.to_string()))?),
        };
        let mut w = Self {
            raw: frame_buffer(),
            out,
            zstd,
            skip: 0,
            backoff: 8,
            auto: compression == Compression::Auto,
            raw_bytes: 0,
            wire_bytes: MAGIC.len() as u64,
        };
        (w.out)(MAGIC.to_vec())?;
        Ok(w)
    }

    /// Cuts a frame when enough records are buffered.
    pub fn maybe_flush(&mut self) -> Result<(), TransferError> {
        if self.raw.len() >= HEAD + FRAME_TARGET {
            self.flush()
        } else {
            Ok(())
        }
    }

    pub fn flush(&mut self) -> Result<(), TransferError> {
        let raw_len = self.raw.len() - HEAD;
        if raw_len == 0 {
            return Ok(());
        }
        let mut compressed = None;
        if let Some(z) = self.zstd.as_mut().filter(|_| self.skip == 0) {
            let mut frame = vec![0u8; HEAD + raw_len];
            match z.compress_to_buffer(&self.raw[HEAD..], &mut frame[HEAD..]) {
                Ok(n) if n < raw_len - raw_len / 10 => {
                    frame.truncate(HEAD + n);
                    compressed = Some(frame);
                    self.backoff = 8;
                }
                _ if self.auto => {
                    // Incompressible data: try again later, and less often while it lasts.
                    self.skip = self.backoff;
                    self.backoff = (self.backoff * 2).min(256);
                }
                _ => {}
            }
        } else {
            self.skip = self.skip.saturating_sub(1);
        }
        let (flag, mut frame) = match compressed {
            Some(f) => (1u8, f),
            None => (0u8, std::mem::replace(&mut self.raw, frame_buffer())),
        };
        let enc_len = frame.len() - HEAD;
        frame[0] = flag;
        frame[1..5].copy_from_slice(&(raw_len as u32).to_le_bytes());
        frame[5..9].copy_from_slice(&(enc_len as u32).to_le_bytes());
        self.raw_bytes += raw_len as u64;
        self.wire_bytes += frame.len() as u64;
        self.raw.truncate(HEAD);
        (self.out)(frame)
    }
}
