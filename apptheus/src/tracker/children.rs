//! A member's children as the kernel lists them (`/proc/<pid>/task/<tid>/children`, on kernels
//! built with CONFIG_PROC_CHILDREN), so that admitting a container reads its own tree instead
//! of listing the host's processes.
//!
//! A children file lists the children of one thread (a child forked by a thread other than the
//! main one shows only under that thread), so every thread's file is read. The pids read are
//! only candidates: the member's pid may have been reused while its files were read (the
//! caller checks the member is still alive after), and a child's pid may be reused before it
//! is held (the caller checks its parent once it holds it). The kernel prints a file in pieces
//! and finds where to go on by position: a child reaped while its parent's file is read may
//! make it skip a sibling; such a reap leaves a listed pid that no longer opens, which the
//! caller sees. A thread that exits while its siblings' files are read hands its children to
//! one of them, perhaps one read already: `read` reports it. Either way the caller looks again
//! rather than trust the reading.
use std::{fs, io, os::unix::fs::OpenOptionsExt as _, sync::OnceLock};

/// Threads of one member whose files are read, at most.
const MAX_THREADS: usize = 4096;
/// What one read takes (the kernel gives a page at most per read).
const CHUNK: usize = 4096;

/// Whether this kernel has children files (decided once: a kernel option).
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        !crate::testhook::admit_by_listing() && open("/proc/thread-self/children").is_ok()
    })
}

/// Append to `out` the pids the children files of `pid`'s threads list, at most `limit` in
/// all. Returns false when a thread vanished while they were read, or a bound cut the reading
/// short (a child may be missing). An error only if `pid`'s thread list cannot be read.
pub fn read(pid: i32, limit: usize, out: &mut Vec<i32>) -> io::Result<bool> {
    let start = out.len();
    let mut whole = true;
    let mut buf = [0u8; CHUNK];
    for (threads, entry) in fs::read_dir(format!("/proc/{pid}/task"))?.enumerate() {
        if threads >= MAX_THREADS {
            whole = false;
            break;
        }
        let Some(tid) = entry
            .ok()
            .and_then(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        else {
            whole = false;
            continue;
        };
        let path = format!("/proc/{pid}/task/{tid}/children");
        let budget = limit.saturating_sub(out.len() - start);
        match open(&path).and_then(|f| parse(f, &mut buf, budget, out)) {
            Ok(true) => {}
            // Cut short at `limit`, or the thread exited (its children went to another).
            Ok(false) | Err(_) => whole = false,
        }
    }
    Ok(whole)
}

fn open(path: &str) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY)
        .open(path)
}

/// Append the pids of a children file (`"12 34 56 "`) read from `r` in pieces, `budget` at
/// most. Returns false if there were more.
fn parse(
    mut r: impl io::Read,
    buf: &mut [u8],
    budget: usize,
    out: &mut Vec<i32>,
) -> io::Result<bool> {
    let mut added = 0;
    // The digits of a pid cut by the end of a piece.
    let mut partial: Option<u64> = None;
    loop {
        let n = match r.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for &b in &buf[..n] {
            if b.is_ascii_digit() {
                let d = u64::from(b - b'0');
                // Saturates far above any pid: an overlong number is no pid, not another one.
                partial = Some(partial.unwrap_or(0).saturating_mul(10).saturating_add(d));
                continue;
            }
            if let Some(v) = partial.take() {
                if added >= budget {
                    return Ok(false);
                }
                if let Ok(pid) = i32::try_from(v)
                    && pid > 0
                {
                    out.push(pid);
                    added += 1;
                }
            }
        }
    }
    if let Some(v) = partial {
        if added >= budget {
            return Ok(false);
        }
        if let Ok(pid) = i32::try_from(v)
            && pid > 0
        {
            out.push(pid);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out `step` bytes at a time, as the kernel hands out pages.
    struct Pieces<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl io::Read for Pieces<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn parsed(data: &[u8], step: usize, budget: usize) -> (Vec<i32>, bool) {
        let mut out = Vec::new();
        let mut buf = [0u8; 8];
        let whole = parse(Pieces { data, step }, &mut buf, budget, &mut out).unwrap();
        (out, whole)
    }

    #[test]
    fn pids_cut_between_pieces_are_whole() {
        for step in 1..8 {
            assert_eq!(
                parsed(b"12 3456 78901 4194304 ", step, 100),
                (vec![12, 3456, 78901, 4194304], true),
                "pieces of {step}"
            );
        }
        assert_eq!(parsed(b"", 3, 100), (vec![], true));
        assert_eq!(parsed(b"7", 3, 100), (vec![7], true));
    }

    #[test]
    fn a_file_past_the_budget_is_cut_short() {
        assert_eq!(parsed(b"1 2 3 4 ", 3, 2), (vec![1, 2], false));
        assert_eq!(parsed(b"1 2 3", 3, 2), (vec![1, 2], false));
        assert_eq!(parsed(b"1 2 ", 3, 2), (vec![1, 2], true));
    }

    #[test]
    fn what_is_no_pid_is_skipped() {
        assert_eq!(
            parsed(b"0 99999999999999 5 ", 4, 100),
            (vec![5], true),
            "zero and an overlong number"
        );
    }

    #[test]
    fn a_forked_child_is_listed_where_the_kernel_has_the_files() {
        if !available() {
            return;
        }
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let mut out = Vec::new();
        let whole = read(std::process::id() as i32, 100_000, &mut out).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(whole);
        assert!(out.contains(&(child.id() as i32)), "{out:?}");
    }
}
