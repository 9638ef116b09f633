//! Process file descriptors: a handle on one process that a reused pid cannot fool.
use std::{
    io,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// A pidfd: refers to the process it was opened for, whatever later happens to its pid.
#[derive(Debug)]
pub struct Pidfd(OwnedFd);

impl Pidfd {
    /// A pidfd for `pid`, or `None` if there is no such process (or no live one: see below).
    pub fn open(pid: i32) -> io::Result<Option<Pidfd>> {
        let Some(pid) = rustix::process::Pid::from_raw(pid) else {
            return Ok(None);
        };
        match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
            Ok(fd) => Ok(Some(Pidfd(fd))),
            Err(rustix::io::Errno::SRCH) => Ok(None),
            // The pid has no thread-group leader: a process being reaped (its pid not freed
            // yet: seen on 6.1 for a peer that exited right after connecting), or a thread's
            // id. Neither is a live process to hold. Kernels say EINVAL (before 6.9) or ENOENT.
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the process has exited (a pidfd polls readable once it has).
    pub fn has_exited(&self) -> io::Result<bool> {
        let mut fds = [PollFd::new(self.0.as_fd(), PollFlags::POLLIN)];
        let n = poll(&mut fds, PollTimeout::ZERO)?;
        Ok(n > 0
            && fds[0]
                .revents()
                .is_some_and(|r| r.contains(PollFlags::POLLIN)))
    }
}

impl Pidfd {
    /// Another pidfd of the same process.
    pub fn try_clone(&self) -> io::Result<Pidfd> {
        self.0.try_clone().map(Pidfd)
    }
}

impl From<OwnedFd> for Pidfd {
    fn from(fd: OwnedFd) -> Pidfd {
        Pidfd(fd)
    }
}

impl AsFd for Pidfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// A process held by its pidfd: what every move into a container's cgroup is tied to. Its pid
/// is only ever used while the pidfd shows the process alive.
#[derive(Debug)]
pub struct Process {
    pid: i32,
    fd: Pidfd,
}

impl Process {
    pub fn new(pid: i32, fd: Pidfd) -> Process {
        Process { pid, fd }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether the process is still alive (an error polling counts as gone: never act on it).
    pub fn alive(&self) -> bool {
        matches!(self.fd.has_exited(), Ok(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_that_names_no_process_leader_is_no_process() {
        assert!(Pidfd::open(std::process::id() as i32).unwrap().is_some());
        // A thread's id: pidfd_open fails as for a process being reaped (EINVAL or ENOENT).
        let (tx, rx) = std::sync::mpsc::channel();
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            tx.send(rustix::thread::gettid().as_raw_nonzero().get())
                .unwrap();
            let _ = wait.recv();
        });
        let tid = rx.recv().unwrap();
        assert!(Pidfd::open(tid).unwrap().is_none());
        drop(done);
        t.join().unwrap();
    }
}
