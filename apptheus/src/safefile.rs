//! Reading a file that root opens by a path someone else may have had a hand in: the state file,
//! the salt file, the web config and its certificates (in directories an administrator names),
//! a user's job ad (opened as that user, through `asuser`). One policy for all: a symbolic link
//! is not followed, a terminal never becomes the daemon's, a FIFO or a device is refused without
//! blocking, and no more than a bound is read. A leaf: it imports nothing of the crate.
use std::{
    fs::{File, Metadata, OpenOptions},
    io::{self, Read as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

/// How every such file is opened (std adds O_CLOEXEC): O_NOFOLLOW refuses a link in the last
/// component (ELOOP), O_NOCTTY keeps a terminal from becoming the controlling one, O_NONBLOCK
/// keeps a FIFO nobody writes from blocking the open (it is then refused as not a regular file;
/// on a regular file the flag changes nothing). Also for files root writes by such a path.
pub const FLAGS: libc::c_int = libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK;

/// Why a file was not read. Each message names the file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Opening, inspecting or reading it failed (a link: ELOOP).
    #[error("reading {}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
    #[error("{} is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("{} is larger than {max} bytes", path.display())]
    TooLarge { path: PathBuf, max: u64 },
}

impl Error {
    /// Nothing is at the path.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Io { error, .. } if error.kind() == io::ErrorKind::NotFound)
    }
}

/// A regular file, open for reading (checked on its descriptor, so a rename in between cannot
/// swap it).
#[derive(Debug)]
pub struct Opened {
    file: File,
    meta: Metadata,
    path: PathBuf,
}

impl Opened {
    /// Its owner, mode, size, as the descriptor saw them when it was opened.
    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }

    /// All of it, if it holds at most `max` bytes.
    pub fn read(self, max: u64) -> Result<Vec<u8>, Error> {
        let too_large = |path| Error::TooLarge { path, max };
        if self.meta.len() > max {
            return Err(too_large(self.path));
        }
        // One byte past the bound tells a file that grew since it was opened.
        let mut bytes = Vec::with_capacity(usize::try_from(self.meta.len()).unwrap_or(0));
        if let Err(error) = self
            .file
            .take(max.saturating_add(1))
            .read_to_end(&mut bytes)
        {
            return Err(Error::Io {
                path: self.path,
                error,
            });
        }
        if bytes.len() as u64 > max {
            return Err(too_large(self.path));
        }
        Ok(bytes)
    }

    /// The open file, for a reader with a bound of its own.
    pub fn into_file(self) -> File {
        self.file
    }
}

/// Whether a symbolic link at the path is followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Links {
    /// Refused (ELOOP): the path is in a directory someone else may write (the state file, a
    /// user's files).
    Refuse,
    /// Followed: a file an administrator named by a flag, which sites keep behind links
    /// (Let's Encrypt's `live/`, a Kubernetes secret's mount).
    Follow,
}

/// Open `path` with `FLAGS`: a regular file only.
pub fn open(path: &Path) -> Result<Opened, Error> {
    open_with(path, Links::Refuse)
}

/// Open `path` with `FLAGS`, less O_NOFOLLOW where `links` follows: a regular file only.
pub fn open_with(path: &Path, links: Links) -> Result<Opened, Error> {
    let io_error = |error| Error::Io {
        path: path.to_path_buf(),
        error,
    };
    let flags = match links {
        Links::Refuse => FLAGS,
        Links::Follow => FLAGS & !libc::O_NOFOLLOW,
    };
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(io_error)?;
    let meta = file.metadata().map_err(io_error)?;
    if !meta.is_file() {
        return Err(Error::NotAFile {
            path: path.to_path_buf(),
        });
    }
    Ok(Opened {
        file,
        meta,
        path: path.to_path_buf(),
    })
}

/// The whole regular file at `path`, if it holds at most `max` bytes.
pub fn read(path: &Path, max: u64) -> Result<Vec<u8>, Error> {
    open(path)?.read(max)
}

/// As `read`, following a link: for a file an administrator named by a flag.
pub fn read_named(path: &Path, max: u64) -> Result<Vec<u8>, Error> {
    open_with(path, Links::Follow)?.read(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_regular_file_within_its_bound_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"12345").unwrap();
        assert_eq!(read(&file, 5).unwrap(), b"12345");
        assert_eq!(read(&file, 1 << 20).unwrap(), b"12345");
        let err = read(&file, 4).unwrap_err();
        assert!(matches!(err, Error::TooLarge { max: 4, .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!("{} is larger than 4 bytes", file.display())
        );
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert_eq!(read(&empty, 0).unwrap(), b"");
    }

    #[test]
    fn a_link_a_directory_a_fifo_and_a_device_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let err = read(&link, 16).unwrap_err();
        assert!(
            matches!(&err, Error::Io { error, .. } if error.raw_os_error() == Some(libc::ELOOP)),
            "{err}"
        );
        assert!(err.to_string().starts_with("reading "), "{err}");
        assert!(err.to_string().contains("link"), "{err}");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        for path in [dir.path(), &fifo, Path::new("/dev/null")] {
            let err = read(path, 16).unwrap_err();
            assert!(matches!(err, Error::NotAFile { .. }), "{err}");
            assert_eq!(
                err.to_string(),
                format!("{} is not a regular file", path.display())
            );
        }
    }

    #[test]
    fn a_missing_file_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let err = read(&dir.path().join("missing"), 16).unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert!(!Error::NotAFile { path: "x".into() }.is_not_found());
    }

    #[test]
    fn the_metadata_is_the_open_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"abc").unwrap();
        let opened = open(&file).unwrap();
        // Replaced after the open: the descriptor still reads, and describes, the first file.
        std::fs::rename(&file, dir.path().join("old")).unwrap();
        std::fs::write(&file, b"longer text").unwrap();
        assert_eq!(opened.metadata().len(), 3);
        assert_eq!(opened.read(3).unwrap(), b"abc");
    }
}
