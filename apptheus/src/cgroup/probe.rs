//! A container's CPU probe file (v1 cpuacct.usage, v2 cpu.stat), kept open between passes.
//!
//! The probe is the one file read for every container at every pass (an idle container's other
//! files are read every few seconds only), so its cost is most of a pass at scale. Opening a
//! cgroup file walks its path and sets up the kernel's seq_file each time; keeping it open and
//! reading it again with `pread` at offset 0 (which makes the kernel's seq_file start over, so
//! the value is current) leaves one syscall per container and pass.
//!
//! Open probes are bounded by the descriptor budget (`descriptors`): they take what the
//! containers' connections leave, and give it back as connections grow; a probe with no room is
//! opened, read and closed at each pass. A cgroup that is removed
//! while its probe is open fails the read (ENODEV): the file is closed and the read falls back
//! to the path, which then finds nothing, as for any missing file.
use std::{
    fs::File,
    io,
    os::unix::fs::FileExt as _,
    path::Path,
    sync::{Arc, Weak},
};

use parking_lot::{Mutex, MutexGuard};

use crate::descriptors::{Evict, ProbeSlot};

/// Which file a probe is, so that an open one is parsed without looking at the container's
/// hierarchies again (a pointer chase per container and pass that showed in the profile).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// v1 cpuacct.usage (nanoseconds).
    V1Usage,
    /// v2 cpu.stat.
    V2CpuStat,
}

/// A kept-open probe: the file, what it is, and its place in the descriptor budget.
type Open = (File, Kind, ProbeSlot);

/// The open probe of one container, if any. Closed when dropped (or by `close`).
#[derive(Default)]
pub(super) struct ProbeFile {
    kept: Arc<Kept>,
}

/// The file, shared with the descriptor budget, which may close it for a connection.
#[derive(Default)]
struct Kept(Mutex<Option<Open>>);

impl Evict for Kept {
    fn evict(&self) {
        self.0.lock().take();
    }
}

impl std::fmt::Debug for ProbeFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbeFile")
            .field("open", &self.slot().is_some())
            .finish()
    }
}

impl ProbeFile {
    fn slot(&self) -> MutexGuard<'_, Option<Open>> {
        self.kept.0.lock()
    }

    /// Reads the open probe into `buf` (grown as needed) and hands its kind and text to `f`.
    /// `None` when no file is open, or when the read failed: its cgroup was removed (ENODEV),
    /// or something else went wrong with this descriptor; it is closed then, and the caller
    /// reads through the path.
    pub(super) fn read_open<T>(
        &self,
        buf: &mut Vec<u8>,
        f: impl FnOnce(Kind, &str) -> T,
    ) -> Option<T> {
        let mut slot = self.slot();
        let (file, kind, _) = slot.as_ref()?;
        match pread_all(file, buf) {
            Ok(n) => {
                let kind = *kind;
                drop(slot);
                Some(f(kind, text(&buf[..n])?))
            }
            Err(error) => {
                tracing::trace!("probe read failed, reopening: {error}");
                close(&mut slot);
                None
            }
        }
    }

    /// Opens `path`, the probe of `kind`, reads it into `buf` and hands its text to `f`; keeps
    /// the file open for the next pass while the budget allows. `None` when the file is
    /// missing or unreadable, or not UTF-8.
    pub(super) fn read_path<T>(
        &self,
        path: &Path,
        kind: Kind,
        buf: &mut Vec<u8>,
        f: impl FnOnce(&str) -> T,
    ) -> Option<T> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(error) => {
                report(path, &error);
                return None;
            }
        };
        let n = match pread_all(&file, buf) {
            Ok(n) => n,
            Err(error) => {
                report(path, &error);
                return None;
            }
        };
        let mut slot = self.slot();
        let keeper: Weak<dyn Evict> = Arc::downgrade(&self.kept) as Weak<dyn Evict>;
        if slot.is_none()
            && let Some(place) = ProbeSlot::take(keeper)
        {
            *slot = Some((file, kind, place));
        }
        drop(slot);
        text(&buf[..n]).map(f)
    }

    /// Whether the file is open now (for tests).
    #[cfg(test)]
    pub(super) fn is_open(&self) -> bool {
        self.slot().is_some()
    }

    /// Closes the file (before its cgroup is removed: an open file pins kernel memory).
    pub(super) fn close(&self) {
        close(&mut self.slot());
    }
}

impl Drop for ProbeFile {
    fn drop(&mut self) {
        self.close();
    }
}

fn close(slot: &mut Option<Open>) {
    slot.take();
}

/// The whole file from offset 0 into `buf`; returns its length. A cgroup file is one record
/// the kernel formats on each read from offset 0: a read that leaves room in the buffer got
/// all of it, so one syscall is enough unless the text outgrows the buffer.
fn pread_all(file: &File, buf: &mut Vec<u8>) -> io::Result<usize> {
    // The buffer keeps its initialized length between reads (no zeroing per read); only the
    // filled part counts.
    if buf.len() < 512 {
        buf.resize(512, 0);
    }
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        match file.read_at(&mut buf[filled..], filled as u64) {
            Ok(0) => break,
            Ok(n) => {
                filled += n;
                if filled < buf.len() {
                    break;
                }
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

fn text(buf: &[u8]) -> Option<&str> {
    match std::str::from_utf8(buf) {
        Ok(text) => Some(text),
        Err(error) => {
            tracing::debug!("a CPU probe is not UTF-8: {error}");
            None
        }
    }
}

fn report(path: &Path, error: &io::Error) {
    if error.kind() == io::ErrorKind::NotFound {
        tracing::trace!("{} is missing", path.display());
    } else {
        tracing::debug!("cannot read {}: {error}", path.display());
    }
}
