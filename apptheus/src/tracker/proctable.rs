//! The host's parent links, kept between registrations: how admission finds a launcher's
//! descendants on a kernel without children files (`/proc/<pid>/task/<tid>/children`, see
//! `children`), and where a reading of those may have missed a child.
//!
//! Without children files, finding a launcher's descendants means knowing every process's
//! parent, and the kernel offers only `/proc/<pid>/stat` for that: tens of microseconds per
//! process, so a full walk of a node with thousands of processes costs tens of milliseconds,
//! for every container. The table keeps what earlier walks read: a refresh lists
//! `/proc` (cheap) and reads `stat` only for processes it has not seen, or whose parent has
//! exited (they may have been reparented). A process is known by its pid *and* the inode number
//! of its `/proc/<pid>` directory: a new process never gets the inode of an older one, so a
//! reused pid is never mistaken for the process it replaced. Parent links are kept the same
//! way: a child's link names its parent's pid and inode, and counts only while a process with
//! that pid and inode is in the table; a parent pid reused by another process breaks the link.
//!
//! Registrations that come together share a listing: a walk needs one that began after its
//! last adoptions (`refresh_since`), and one that another registration began after that serves
//! as well as its own. In a burst of admissions the listing is then paid once per burst rather
//! than once per container.
use std::{
    cell::OnceCell,
    fs,
    io::Read as _,
    os::unix::fs::{DirEntryExt as _, OpenOptionsExt as _},
    time::Instant,
};

use foldhash::{HashMap, HashSet};

/// One process: its identity, and its parent's.
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// The inode of its /proc/<pid>.
    ino: u64,
    ppid: i32,
    /// The inode of the parent's /proc/<ppid> when the link was read; `None` if the parent was
    /// not listed then (a link that never counts).
    parent_ino: Option<u64>,
}

#[derive(Default)]
pub struct ProcTable {
    entries: HashMap<i32, Entry>,
    /// `stat` files read in the last refresh (for the tests: that a refresh reads few).
    #[cfg(test)]
    last_reads: usize,
    /// When the last listing of /proc began.
    listed_at: Option<Instant>,
    /// Each pid's children by the links that count, built once per listing.
    children: OnceCell<HashMap<i32, Vec<i32>>>,
}

impl ProcTable {
    /// Bring the table up to date with the processes that existed at `need` or later: a
    /// listing that began at or after `need` is reused. Returns whether /proc was listed.
    pub fn refresh_since(&mut self, need: Instant) -> std::io::Result<bool> {
        if self.listed_at.is_some_and(|at| at >= need) {
            return Ok(false);
        }
        let at = Instant::now();
        self.refresh()?;
        self.listed_at = Some(at);
        Ok(true)
    }

    /// Bring the table up to date with the processes that exist now.
    pub fn refresh(&mut self) -> std::io::Result<()> {
        crate::testhook::counted_listing();
        self.changed();
        let mut listing: Vec<(i32, u64)> = Vec::with_capacity(self.entries.len() + 64);
        for entry in fs::read_dir("/proc")? {
            let Ok(entry) = entry else { continue };
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            listing.push((pid, entry.ino()));
        }
        let current: HashMap<i32, u64> = listing.iter().copied().collect();
        // Gone, or the pid now names another process.
        self.entries
            .retain(|pid, e| current.get(pid) == Some(&e.ino));
        let mut buf = [0u8; 1024];
        #[cfg(test)]
        {
            self.last_reads = 0;
        }
        for (pid, ino) in listing {
            // A link stands while its parent is the same process; else (the parent exited: the
            // child may have been reparented) it is read again.
            if let Some(e) = self.entries.get(&pid)
                && (e.ppid == 0 || current.get(&e.ppid) == e.parent_ino.as_ref())
            {
                continue;
            }
            #[cfg(test)]
            {
                self.last_reads += 1;
            }
            // Processes vanish during the walk; that is not an error.
            match read_ppid(pid, &mut buf) {
                Some(ppid) => {
                    let parent_ino = current.get(&ppid).copied();
                    self.entries.insert(
                        pid,
                        Entry {
                            ino,
                            ppid,
                            parent_ino,
                        },
                    );
                }
                None => {
                    self.entries.remove(&pid);
                }
            }
        }
        Ok(())
    }

    /// The inode of `pid`'s /proc directory as of the last refresh.
    pub fn ino_of(&self, pid: i32) -> Option<u64> {
        self.entries.get(&pid).map(|e| e.ino)
    }

    /// The entries changed: the children index is built again when next asked for.
    fn changed(&mut self) {
        self.children.take();
    }

    /// The descendants of `roots` (not the roots themselves) as of the last refresh.
    pub fn descendants(&self, roots: &[i32]) -> Vec<i32> {
        let children = self.children.get_or_init(|| {
            let mut children: HashMap<i32, Vec<i32>> = HashMap::default();
            for (&pid, e) in &self.entries {
                // Only links to the very process they were read from.
                let linked = self
                    .entries
                    .get(&e.ppid)
                    .is_some_and(|parent| Some(parent.ino) == e.parent_ino);
                if linked {
                    children.entry(e.ppid).or_default().push(pid);
                }
            }
            children
        });
        // Each pid is visited once, whatever the links say.
        let mut seen: HashSet<i32> = roots.iter().copied().collect();
        let mut out = Vec::new();
        let mut queue = roots.to_vec();
        while let Some(p) = queue.pop() {
            for &k in children.get(&p).into_iter().flatten() {
                if seen.insert(k) {
                    out.push(k);
                    queue.push(k);
                }
            }
        }
        out
    }

    /// How many `stat` files the last refresh read.
    #[cfg(test)]
    pub fn last_reads(&self) -> usize {
        self.last_reads
    }
}

/// The parent pid in `pid`'s `stat` (one read into `buf`: the fields before it are short).
pub(super) fn read_ppid(pid: i32, buf: &mut [u8]) -> Option<i32> {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY)
        .open(format!("/proc/{pid}/stat"))
        .ok()?;
    let n = f.read(buf).ok()?;
    parse_stat_ppid(&buf[..n])
}

/// The parent pid in the text of a `/proc/<pid>/stat`: `pid (comm) state ppid ...`. The command
/// name may hold spaces and parentheses, so the fields start after the *last* `)`.
pub fn parse_stat_ppid(stat: &[u8]) -> Option<i32> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(stat.get(close + 1..)?).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let _state = fields.next()?;
    fields.next()?.parse().ok().filter(|&p: &i32| p >= 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_to_a_reused_parent_pid_does_not_count() {
        let entry = |ino, ppid, parent_ino| Entry {
            ino,
            ppid,
            parent_ino,
        };
        let mut t = ProcTable::default();
        t.entries.insert(10, entry(100, 1, Some(1)));
        t.entries.insert(20, entry(200, 10, Some(100)));
        t.entries.insert(30, entry(300, 20, Some(200)));
        assert_eq!(sorted(t.descendants(&[10])), [20, 30]);
        // Pid 10 is another process now: 20's link (read from the old one) is broken.
        t.entries.insert(10, entry(101, 1, Some(1)));
        t.changed();
        assert!(t.descendants(&[10]).is_empty());
        // A link whose parent was not listed when it was read never counts.
        t.entries.insert(20, entry(200, 10, None));
        t.changed();
        assert!(t.descendants(&[10]).is_empty());
    }

    fn sorted(mut v: Vec<i32>) -> Vec<i32> {
        v.sort();
        v
    }

    #[test]
    fn ppid_of_stat_lines() {
        assert_eq!(
            parse_stat_ppid(b"4242 (sleep) S 4200 4242 4200 0 -1 4194560 101 0 0 0"),
            Some(4200)
        );
        // A command name with spaces and parentheses.
        assert_eq!(parse_stat_ppid(b"7 (a) b (c)) R 1 7 7 0 -1 0\n"), Some(1));
        assert_eq!(parse_stat_ppid(b"2 (kthreadd) S 0 0 0"), Some(0));
        for bad in [
            &b""[..],
            b"42 (x",
            b"42 (x) S",
            b"42 (x) S -3 1",
            b"42 (x) S abc",
            b"42 (x) S 99999999999",
            b"\xff)\xff",
        ] {
            assert_eq!(parse_stat_ppid(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn refresh_reads_only_what_changed() {
        let mut t = ProcTable::default();
        t.refresh().unwrap();
        let me = std::process::id() as i32;
        assert!(t.last_reads() > 0);
        assert!(t.entries.contains_key(&me));
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        t.refresh().unwrap();
        // The new child, and little else: not the whole table again (other tests' processes may
        // come and go meanwhile, hence no exact count).
        assert!(
            (1..t.entries.len() / 2).contains(&t.last_reads()),
            "{} stat reads for {} processes",
            t.last_reads(),
            t.entries.len()
        );
        assert!(t.descendants(&[me]).contains(&(child.id() as i32)));
        child.kill().unwrap();
        child.wait().unwrap();
        t.refresh().unwrap();
        assert!(!t.descendants(&[me]).contains(&(child.id() as i32)));
    }

    #[test]
    fn a_listing_begun_after_the_need_is_shared() {
        let mut t = ProcTable::default();
        let need = Instant::now();
        assert!(t.refresh_since(need).unwrap(), "the first need lists /proc");
        // Another registration whose need came before that listing began: served by it.
        assert!(!t.refresh_since(need).unwrap());
        // A need after it: listed again, and a process forked in between is found.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let me = std::process::id() as i32;
        assert!(t.refresh_since(Instant::now()).unwrap());
        assert!(t.descendants(&[me]).contains(&(child.id() as i32)));
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
