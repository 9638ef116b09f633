//! Users and groups made by a test (`useradd`, `groupadd`), removed when dropped.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use std::time::Duration;

use super::{Daemon, Workload, bin, eventually, prometheus::tool, workload_bin};

/// A user made for this test with `useradd` (a home with a copy of apptheus-exec in it, which
/// the daemon does not trust); `userdel -r` when dropped.
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub home: PathBuf,
}

impl TestUser {
    pub fn new(tag: &str) -> TestUser {
        Self::with_groups(tag, &[])
    }

    /// A user also in the supplementary `groups` (names).
    pub fn with_groups(tag: &str, groups: &[&str]) -> TestUser {
        // useradd: at most 32 characters, lowercase letters and digits.
        let name = format!("appu{}{tag}", std::process::id());
        let out = Command::new(tool("useradd", "passwd"))
            .args([
                "--create-home",
                "--user-group",
                "--shell",
                "/usr/sbin/nologin",
            ])
            .args(
                (!groups.is_empty())
                    .then(|| ["--groups".to_string(), groups.join(",")])
                    .into_iter()
                    .flatten(),
            )
            .arg(&name)
            .output()
            .expect("run useradd");
        assert!(
            out.status.success(),
            "useradd {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let user = nix::unistd::User::from_name(&name)
            .unwrap()
            .unwrap_or_else(|| panic!("{name} was made but is not in the passwd database"));
        TestUser {
            name,
            uid: user.uid.as_raw(),
            home: user.dir,
        }
    }

    /// `setpriv` to this user, then `cmd`: the launcher runs with the user's uid and groups.
    pub fn command(&self, cmd: &Path) -> Command {
        let mut c = Command::new(tool("setpriv", "util-linux"));
        c.args(self.setpriv_args()).arg(cmd);
        c
    }

    /// A launcher (`apptheus-exec`) of this user on `daemon`, running the workload `ready`
    /// then `steps`; once it is admitted: it and its container id.
    pub fn launch(&self, daemon: &Daemon, steps: &[&str]) -> (Workload, String) {
        self.launch_with(self.command(&bin("apptheus-exec")), daemon, steps)
    }

    /// As `launch`, with `cmd` (which ends in this user's apptheus-exec) as the launcher.
    pub fn launch_with(
        &self,
        mut cmd: Command,
        daemon: &Daemon,
        steps: &[&str],
    ) -> (Workload, String) {
        cmd.arg(format!("--socket={}", daemon.socket.display()))
            .arg("--")
            .arg(workload_bin())
            .arg("ready")
            .args(steps);
        let mut w = Workload::spawn_cmd(&mut cmd);
        w.ready();
        // setpriv execs apptheus-exec: the launcher keeps the pid.
        let id = format!("apptheus-exec_{}", w.pid());
        let label = format!("container=\"{id}\"");
        eventually(Duration::from_secs(10), || {
            daemon.metrics().contains(&label).then_some(())
        })
        .unwrap_or_else(|| panic!("{id} of {} not admitted:\n{}", self.name, daemon.log_text()));
        (w, id)
    }

    pub fn setpriv_args(&self) -> [String; 4] {
        [
            format!("--reuid={}", self.name),
            format!("--regid={}", self.name),
            "--init-groups".into(),
            "--".into(),
        ]
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        // Its processes were ended by the Workloads' drops; remove the user, group and home.
        let _ = Command::new("userdel")
            .args(["--remove", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Ask the query socket at `socket` as `user` (through `setpriv` and perl's core
/// IO::Socket::UNIX, so the daemon sees the user's own credentials and groups): the whole
/// answer, and the time from the user's process start to it.
pub fn query_as(user: &TestUser, socket: &Path, request: &str) -> (String, std::time::Duration) {
    let script = r#"use IO::Socket::UNIX; use Time::HiRes qw(time);
my $t0 = time; my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or die "connect: $!\n";
print $s $ARGV[1]; local $/; my $a = <$s>; printf STDERR "%.6f\n", time - $t0; print $a;"#;
    let mut c = user.command(&tool("perl", "perl"));
    let out = c
        .args(["-e", script])
        .arg(socket)
        .arg(request)
        .output()
        .expect("run perl as the user");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "query as {}: {err}", user.name);
    let secs: f64 = err.trim().parse().unwrap_or_else(|_| panic!("{err}"));
    (
        String::from_utf8(out.stdout).expect("a UTF-8 answer"),
        std::time::Duration::from_secs_f64(secs),
    )
}

/// Ask the query socket at `socket` as root (this process).
pub fn query(socket: &Path, request: &[u8]) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::os::unix::net::UnixStream::connect(socket).expect("connect the query socket");
    s.write_all(request).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

/// A group made for a test with `groupadd`; `groupdel` when dropped (after its users).
pub struct TestGroup {
    pub name: String,
    pub gid: u32,
}

impl TestGroup {
    pub fn new(tag: &str) -> TestGroup {
        let name = format!("appgrp{}{tag}", std::process::id());
        let out = Command::new(tool("groupadd", "passwd"))
            .arg(&name)
            .output()
            .expect("run groupadd");
        assert!(
            out.status.success(),
            "groupadd {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let gid = nix::unistd::Group::from_name(&name)
            .unwrap()
            .unwrap_or_else(|| panic!("{name} was made but is not in the group database"))
            .gid
            .as_raw();
        TestGroup { name, gid }
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        let _ = Command::new("groupdel")
            .arg(&self.name)
            .stderr(Stdio::null())
            .status();
    }
}
