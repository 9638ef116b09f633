//! Reading and writing the small text files of cgroupfs and procfs.
//!
//! Missing files are normal here (memory.peak before Linux 5.19, swap files without swap
//! accounting, a process that just exited), so reads return `None` and log quietly: they run
//! at every sample.
use std::{
    fs,
    io::{self, Read as _, Write as _},
    path::Path,
};

use anyhow::Result;

/// Writes a short text to a kernel file in one write(2), without creating or truncating it.
pub(super) fn write(path: &Path, text: &str) -> io::Result<()> {
    let mut file = fs::OpenOptions::new().write(true).open(path)?;
    file.write_all(text.as_bytes())
}

/// Opens, reads to the end and closes `path` into `buf`, and hands its text to `f`. Unlike
/// `fs::read_to_string` it asks no `statx` for a size (cgroup files report 4096 whatever they
/// hold) and allocates nothing once `buf` has grown.
pub(super) fn read_with<T>(path: &Path, buf: &mut Vec<u8>, f: impl FnOnce(&str) -> T) -> Option<T> {
    let report = |error: io::Error| {
        if error.kind() == io::ErrorKind::NotFound {
            tracing::trace!("{} is missing", path.display());
        } else {
            tracing::debug!("cannot read {}: {error}", path.display());
        }
    };
    let mut file = match fs::File::open(path) {
        Ok(file) => file,
        Err(error) => {
            report(error);
            return None;
        }
    };
    buf.clear();
    loop {
        if buf.len() == buf.capacity() {
            buf.reserve(4096);
        }
        let filled = buf.len();
        buf.resize(buf.capacity(), 0);
        match file.read(&mut buf[filled..]) {
            Ok(0) => {
                buf.truncate(filled);
                break;
            }
            Ok(n) => buf.truncate(filled + n),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => buf.truncate(filled),
            Err(error) => {
                report(error);
                return None;
            }
        }
    }
    match std::str::from_utf8(buf) {
        Ok(text) => Some(f(text)),
        Err(error) => {
            tracing::debug!("{} is not UTF-8: {error}", path.display());
            None
        }
    }
}

/// Reads and parses one file into `buf`; `None` on any failure, so that one bad file costs only
/// its own fields.
pub(super) fn read_parsed_with<T>(
    path: &Path,
    buf: &mut Vec<u8>,
    parse: impl FnOnce(&str) -> Result<T>,
) -> Option<T> {
    match read_with(path, buf, parse)? {
        Ok(value) => Some(value),
        Err(error) => {
            tracing::debug!("cannot parse {}: {error:#}", path.display());
            None
        }
    }
}

/// `read_parsed_with` with a buffer of its own, for the paths that are not sampled every pass.
pub(super) fn read_parsed<T>(path: &Path, parse: impl FnOnce(&str) -> Result<T>) -> Option<T> {
    read_parsed_with(path, &mut Vec::new(), parse)
}

/// The text of a file; `None` when it is missing or unreadable.
pub(super) fn read_text(path: &Path) -> Option<String> {
    read_with(path, &mut Vec::new(), str::to_string)
}
