//! Helpers shared by the integration tests: they run on the real kernel, as root.
#![allow(dead_code)]

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

/// Fail (never skip) when the suite is not run as root.
pub fn require_root() {
    // SAFETY: no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root: it loads eBPF programs, creates cgroups and moves processes; run `cargo xtask test` as root"
    );
}

/// The directory cargo put this test's binaries in (target/<profile>).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test>-<hash>
    exe.parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .to_path_buf()
}

/// The scriptable workload program (apptheus/examples/workload.rs).
pub fn workload_bin() -> PathBuf {
    let p = target_dir().join("examples").join("workload");
    assert!(
        p.exists(),
        "{} is missing: build it with `cargo build --examples`",
        p.display()
    );
    p
}

/// A running workload whose steps are driven through stdin/stdout.
pub struct Workload {
    pub child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Workload {
    pub fn spawn(steps: &[&str]) -> Workload {
        Self::spawn_cmd(Command::new(workload_bin()).args(steps))
    }

    pub fn spawn_cmd(cmd: &mut Command) -> Workload {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn workload");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Workload {
            child,
            stdin,
            stdout,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The next line the workload prints.
    pub fn line(&mut self) -> String {
        let mut s = String::new();
        self.stdout.read_line(&mut s).expect("read workload stdout");
        assert!(!s.is_empty(), "workload {} closed its stdout", self.pid());
        s.trim().to_string()
    }

    /// Wait for the `ready` step.
    pub fn ready(&mut self) {
        let l = self.line();
        assert!(l.starts_with("ready"), "expected ready, got {l:?}");
    }

    /// Let a `wait` step continue.
    pub fn go(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin
            .write_all(b"\n")
            .and_then(|_| stdin.flush())
            .expect("write workload stdin");
    }

    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.stdin = None;
        self.child.wait().expect("wait workload")
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        // End only what this test started, by pid.
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Poll `f` until it returns Some or `timeout` passes.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A process-unique, test-unique name.
pub fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
