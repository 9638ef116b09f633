//! Helpers shared by the integration tests: they run on the real kernel, as root.
#![allow(dead_code)]

pub mod cgroups;
pub mod fleet;
pub mod pki;
pub mod prometheus;
pub mod slurm;
pub mod users;

#[allow(unused_imports)]
pub use cgroups::cgroup_of;

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
    // Run as the tests' unprivileged users too.
    for_users(&p)
}

/// A running workload whose steps are driven through stdin/stdout.
pub struct Workload {
    pub child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    /// Started as (or through a shell that execs) `apptheus-exec`: the container's launcher
    /// is then apptheus-exec's child, which connected and became CMD (see `pid`).
    via_exec: bool,
    launcher: std::cell::OnceCell<i32>,
}

impl Workload {
    pub fn spawn(steps: &[&str]) -> Workload {
        Self::spawn_cmd(Command::new(workload_bin()).args(steps))
    }

    pub fn spawn_cmd(cmd: &mut Command) -> Workload {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        // A binary a test just copied can be busy for a moment: another test's fork, between
        // its fork and its exec, holds a copy of the descriptor it was written through
        // (ETXTBSY). That passes as soon as that child execs.
        let mut busy = 0;
        let mut child = loop {
            match cmd.spawn() {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && busy < 500 => {
                    busy += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                spawned => break spawned.expect("spawn workload"),
            }
        };
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let via_exec = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .any(|a| a.to_string_lossy().contains("apptheus-exec"));
        Workload {
            child,
            stdin,
            stdout,
            via_exec,
            launcher: std::cell::OnceCell::new(),
        }
    }

    /// The container's launcher: the process spawned, or for `apptheus-exec` its child (the
    /// one that connected, now CMD), found once apptheus-exec runs and has forked it. An
    /// apptheus-exec that exited first names itself.
    pub fn pid(&self) -> i32 {
        let top = self.child.id() as i32;
        if !self.via_exec {
            return top;
        }
        *self.launcher.get_or_init(|| {
            eventually(Duration::from_secs(10), || {
                let proc = procfs::process::Process::new(top).ok()?;
                let stat = proc.stat().ok()?;
                if stat.state == 'Z' || stat.state == 'X' {
                    return Some(top);
                }
                let exe = proc.exe().ok()?;
                if !exe
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("apptheus-exec"))
                {
                    return None;
                }
                let children =
                    std::fs::read_to_string(format!("/proc/{top}/task/{top}/children")).ok()?;
                children.split_whitespace().next()?.parse().ok()
            })
            .unwrap_or(top)
        })
    }

    /// The process spawned (apptheus-exec itself, outside its container).
    pub fn exec_pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The next line the workload prints.
    pub fn line(&mut self) -> String {
        let mut s = String::new();
        self.stdout.read_line(&mut s).expect("read workload stdout");
        assert!(
            !s.is_empty(),
            "workload {} closed its stdout",
            self.exec_pid()
        );
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
        // End only what this test started, by pid: the process and the tree it forked (a test
        // that failed half-way leaves them running).
        if self.child.try_wait().ok().flatten().is_none() {
            for pid in descendants(self.exec_pid()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
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

/// The port of the first `HTTP server listening address=<ip>:<port>` line in a daemon's
/// logfmt `log`.
pub fn listening_port(log: &str) -> Option<u16> {
    log.lines()
        .filter(|l| l.contains("msg=\"HTTP server listening\""))
        .find_map(|l| {
            let address = l.split(' ').find_map(|kv| kv.strip_prefix("address="))?;
            address
                .parse::<std::net::SocketAddr>()
                .ok()
                .map(|a| a.port())
        })
}

/// A loopback port for a program that cannot be given port 0 (Slurm's daemons read theirs from
/// slurm.conf). It is taken below the kernel's ephemeral range (/proc/sys/net/ipv4/
/// ip_local_port_range, 32768 and up by default), from which every port-0 bind and outgoing
/// connection draws, so no other test's socket can take it; among the test process's own
/// picks, a counter keeps them apart, and a bind check skips ports in use.
pub fn static_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (first, span) = (10_000u32, low.saturating_sub(10_000).max(1000));
    let start = std::process::id() * 97 % span;
    loop {
        let n = u32::from(NEXT.fetch_add(1, Ordering::Relaxed));
        assert!(n < 1000, "no free loopback port below {low}");
        let port = (first + (start + n * 7) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn bin(name: &str) -> PathBuf {
    let p = target_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build it first (cargo xtask test does)",
        p.display()
    );
    match name {
        // Run by the tests' unprivileged users too.
        "apptheus-exec" | "apptheus-top" | "apptheus-report" => for_users(&p),
        _ => p,
    }
}

/// `binary` where any user can run it. The checkout may be private (a clone under root's home,
/// or in a 0700 temporary directory), so the binaries that tests run as other users are hard
/// links (or copies) in a directory of root's that anyone may enter: one per test process, in
/// /tmp; those of test processes that have ended are removed.
pub fn for_users(binary: &std::path::Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    static DIR: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);
    let mut dir = DIR
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = dir.get_or_insert_with(|| {
        for e in std::fs::read_dir("/tmp").into_iter().flatten().flatten() {
            let name = e.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.strip_prefix("apptheus-test-bins-"))
                .and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let dir = PathBuf::from(format!("/tmp/apptheus-test-bins-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).expect("create the test binaries' directory in /tmp");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    });
    let name = binary.file_name().expect("a binary's file name");
    let reachable = dir.join(name);
    if !reachable.exists() && std::fs::hard_link(binary, &reachable).is_err() {
        std::fs::copy(binary, &reachable).expect("copy a binary for the tests' users");
    }
    reachable
}

/// How the tests talk to the daemon's HTTP server: plain HTTP by default; HTTPS and basic auth
/// for a daemon started with `--web.config.file`.
#[derive(Clone)]
pub struct Client {
    pub scheme: &'static str,
    pub agent: ureq::Agent,
    /// A ready `Authorization` header value.
    pub authorization: Option<String>,
}

impl Client {
    /// An agent that reports every status (no error for 4xx/5xx), with a 10 s overall timeout.
    pub fn agent_builder() -> ureq::config::ConfigBuilder<ureq::typestate::AgentScope> {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
    }

    pub fn plain() -> Client {
        Client {
            scheme: "http",
            agent: Self::agent_builder().build().into(),
            authorization: None,
        }
    }
}

/// A running `apptheus` daemon with its own socket, port and cgroup parent.
pub struct Daemon {
    pub child: Child,
    pub port: u16,
    pub socket: PathBuf,
    /// Its query socket (in its own directory unless the test names one).
    pub query: PathBuf,
    pub parent: String,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
    /// The executable, flags and environment it was started with (a restart reuses them).
    exe: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    pub client: Client,
}

impl Daemon {
    /// Start the daemon trusting this build's apptheus-exec, plus `extra` flags; wait until ready.
    pub fn start(extra: &[&str]) -> Daemon {
        let trust = format!("--trust.path={}", bin("apptheus-exec").display());
        let mut args = vec![trust.as_str()];
        args.extend_from_slice(extra);
        Self::start_env(&args, &[])
    }

    /// Start the daemon with `args` as they are (they must include --trust.path).
    pub fn start_with_trust(args: &[&str]) -> Daemon {
        Self::start_env(args, &[])
    }

    /// Start the daemon with `args` and extra environment variables.
    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Self::start_client(args, env, Client::plain())
    }

    /// Start the daemon with `args` and `env`; `client` is how to reach its HTTP server (also
    /// for the readiness check).
    pub fn start_client(args: &[&str], env: &[(&str, &str)], client: Client) -> Daemon {
        Self::start_exe(&bin("apptheus"), args, env, client)
    }

    /// Start the daemon `exe` (e.g. an installed /usr/bin/apptheus) like `start_client`.
    pub fn start_exe(
        exe: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
        client: Client,
    ) -> Daemon {
        require_root();
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("gateway.sock");
        // Never the default (/run/apptheus/query.sock): tests' daemons run side by side.
        let query = args
            .iter()
            .find_map(|a| a.strip_prefix("--query.socket-path="))
            .map_or_else(|| dir.path().join("query.sock"), PathBuf::from);
        // A test may name the parent (a --cgroup.parent among its args); else a unique one.
        let parent = args
            .iter()
            .find_map(|a| a.strip_prefix("--cgroup.parent="))
            .map_or_else(|| unique("apptheus-test"), str::to_string);
        let log = dir.path().join("daemon.log");
        // A test may name the state directory too; else one in the test's directory.
        let state = args
            .iter()
            .find_map(|a| a.strip_prefix("--state.dir="))
            .map_or_else(|| dir.path().join("state"), PathBuf::from);
        let args: Vec<String> = [
            // Port 0: the kernel picks a free port as the daemon binds, so no other test can
            // take it in between; the daemon's log says which.
            "--web.listen-address=127.0.0.1:0".to_string(),
            format!("--socket.path={}", socket.display()),
            format!("--query.socket-path={}", query.display()),
            format!("--cgroup.parent={parent}"),
            format!("--state.dir={}", state.display()),
            "--log.level=debug".to_string(),
        ]
        .into_iter()
        .chain(
            args.iter()
                .filter(|a| {
                    !a.starts_with("--cgroup.parent=")
                        && !a.starts_with("--state.dir=")
                        && !a.starts_with("--query.socket-path=")
                })
                .map(|a| a.to_string()),
        )
        .collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let child = spawn_daemon(exe, &args, &env, &log);
        let mut d = Daemon {
            child,
            exe: exe.to_path_buf(),
            port: 0,
            socket,
            query,
            parent,
            dir,
            log,
            args,
            env,
            client,
        };
        d.wait_ready(0);
        d
    }

    /// Wait for the `HTTP server listening` line written to the log after byte `from` (the
    /// port), then until /-/ready answers 200.
    pub fn wait_ready(&mut self, from: usize) {
        let port = eventually(Duration::from_secs(30), || {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("apptheus exited at start ({st}):\n{}", self.log_text());
            }
            let log = std::fs::read(&self.log).ok()?;
            listening_port(&String::from_utf8_lossy(log.get(from..)?))
        });
        self.port = port.unwrap_or_else(|| {
            panic!(
                "apptheus did not say where it listens after 30 s:\n{}",
                self.log_text()
            )
        });
        let ready = eventually(Duration::from_secs(30), || {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("apptheus exited at start ({st}):\n{}", self.log_text());
            }
            (self.get("/-/ready").0 == 200).then_some(())
        });
        assert!(
            ready.is_some(),
            "apptheus not ready after 30 s:\n{}",
            self.log_text()
        );
    }

    /// Kill it with SIGKILL (no cleanup of its own) and reap it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start it again with the same flags (socket, state dir, cgroup parent; a new port); its
    /// log goes on in the same file.
    pub fn respawn(&mut self) {
        assert!(self.exited(), "respawn: the daemon still runs");
        let from = std::fs::metadata(&self.log).map_or(0, |m| m.len() as usize);
        self.child = spawn_daemon(&self.exe, &self.args, &self.env, &self.log);
        self.wait_ready(from);
    }

    /// Start it again like `respawn`, with `env` added, without waiting: returns where its
    /// log starts (for `wait_ready`).
    pub fn respawn_env(&mut self, env: &[(&str, &str)]) -> usize {
        assert!(self.exited(), "respawn: the daemon still runs");
        let from = std::fs::metadata(&self.log).map_or(0, |m| m.len() as usize);
        let mut all = self.env.clone();
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self.child = spawn_daemon(&self.exe, &self.args, &all, &self.log);
        from
    }

    pub fn state_dir(&self) -> PathBuf {
        self.args
            .iter()
            .find_map(|a| a.strip_prefix("--state.dir="))
            .map_or_else(|| self.dir.path().join("state"), PathBuf::from)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}{path}", self.client.scheme, self.port)
    }

    /// GET `path`: status and body (0 when the server cannot be reached).
    pub fn get(&self, path: &str) -> (u16, String) {
        let call = || {
            let mut req = self.client.agent.get(&self.url(path));
            if let Some(auth) = &self.client.authorization {
                req = req.header("Authorization", auth);
            }
            req.call()
        };
        // A pooled keep-alive connection the server has just closed at its idle timeout fails
        // the request that reuses it; like Go's and Prometheus's clients, try an idempotent GET
        // once more (on a new connection), and say so.
        let result = call().or_else(|e| {
            eprintln!("GET {path}: {e}; once more");
            call()
        });
        match result {
            Ok(mut r) => (
                r.status().as_u16(),
                r.body_mut().read_to_string().unwrap_or_default(),
            ),
            Err(e) => {
                eprintln!("GET {path}: {e}");
                (0, String::new())
            }
        }
    }

    pub fn metrics(&self) -> String {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "GET /metrics");
        body
    }

    /// The daemon's log line, after byte `from`, that contains every one of `needles`,
    /// waiting up to 30 s; fails with the log.
    pub fn wait_log(&self, from: usize, needles: &[&str]) -> String {
        eventually(Duration::from_secs(30), || {
            let log = self.log_text();
            log.get(from..)?
                .lines()
                .find(|l| needles.iter().all(|n| l.contains(n)))
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no log line with {needles:?}:\n{}", self.log_text()))
    }

    /// /metrics once it shows `label` (a container admitted: shown once its processes are
    /// moved), waiting up to 10 s; fails with the daemon's log.
    pub fn metrics_showing(&self, label: &str) -> String {
        eventually(Duration::from_secs(10), || {
            let m = self.metrics();
            m.contains(label).then_some(m)
        })
        .unwrap_or_else(|| {
            panic!(
                "{label} not in /metrics within 10 s; log:\n{}",
                self.log_text()
            )
        })
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `apptheus-exec --socket <ours> -- <cmd>`, stdio piped like a Workload.
    pub fn exec(&self, cmd: &[&str]) -> Workload {
        Workload::spawn_cmd(
            Command::new(bin("apptheus-exec"))
                .arg(format!("--socket={}", self.socket.display()))
                .arg("--")
                .args(cmd),
        )
    }

    /// `apptheus-exec` running the workload with `steps`.
    /// The line of `summaries` (its `--container.summary-file`) for container `id`, waiting
    /// for it.
    pub fn summary_line(&self, summaries: &std::path::Path, id: &str) -> String {
        let quoted = format!("\"{id}\"");
        eventually(Duration::from_secs(10), || {
            let text = std::fs::read_to_string(summaries).ok()?;
            Some(text.lines().find(|l| l.contains(&quoted))?.to_string())
        })
        .unwrap_or_else(|| panic!("no summary of {id}:\n{}", self.log_text()))
    }

    pub fn exec_workload(&self, steps: &[&str]) -> Workload {
        self.exec_workload_env(steps, &[])
    }

    /// `apptheus-exec` running the workload with `steps`, with `env` added to the launcher's
    /// environment (where the daemon finds a batch job's id).
    pub fn exec_workload_env(&self, steps: &[&str], env: &[(&str, &str)]) -> Workload {
        Workload::spawn_cmd(
            Command::new(bin("apptheus-exec"))
                .arg(format!("--socket={}", self.socket.display()))
                .arg("--")
                .arg(workload_bin())
                .args(steps)
                .envs(env.iter().copied()),
        )
    }

    /// Stop it with SIGTERM and wait; returns its exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        self.child.wait().expect("wait apptheus")
    }

    /// Every directory named `self.parent` in the cgroup hierarchies.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        find_dirs(std::path::Path::new("/sys/fs/cgroup"), &self.parent)
    }
}

impl Daemon {
    /// Whether it has exited, without reaping it out from under Drop.
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.stop();
        }
        // Whatever cgroups this test's daemon left (a failed test): remove them once the
        // processes killed above have left them.
        let _ = eventually(Duration::from_secs(3), || {
            let dirs = self.cgroup_dirs();
            dirs.iter().for_each(|d| remove_cgroup_tree(d));
            self.cgroup_dirs().is_empty().then_some(())
        });
    }
}

fn spawn_daemon(
    exe: &std::path::Path,
    args: &[String],
    env: &[(String, String)],
    log: &std::path::Path,
) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // As systemd starts a service: the leader of a session of its own, with no terminal (the
    // state in which opening a terminal would make it the daemon's).
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
    cmd.spawn().expect("spawn apptheus")
}

/// Directories named `name` anywhere under `root` (cgroup trees are shallow here).
pub fn find_dirs(root: &std::path::Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let p = e.path();
                if e.file_name() == name {
                    out.push(p.clone());
                }
                stack.push(p);
            }
        }
    }
    out
}

/// rmdir a cgroup and its children, deepest first (only empty cgroups can go).
pub fn remove_cgroup_tree(dir: &std::path::Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// The value of the first sample of `name` whose labels contain `labels`.
pub fn sample(metrics: &str, name: &str, labels: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let (lbl, val) = match rest.strip_prefix('{') {
            Some(r) => r.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        lbl.contains(labels)
            .then(|| val.trim().parse().ok())
            .flatten()
    })
}

/// The state letter (`R`, `S`, `Z`...) of thread `tid` of process `pid`, None once it is gone.
pub fn thread_state(pid: i32, tid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// Wait until the main thread of `pid` is a zombie (it exited) while the process has another
/// thread: what the workload's `leader-exit` step leaves.
pub fn leader_exited(pid: i32) {
    let threads = || std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
    eventually(Duration::from_secs(10), || {
        (thread_state(pid, pid) == Some('Z') && threads() >= 2).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the main thread of {pid} did not exit alone: state {:?}, {} threads",
            thread_state(pid, pid),
            threads()
        )
    });
}

/// A thread of `pid` other than its main one that has not exited: where the process's cgroup
/// is read once its main thread exited (the kernel shows a zombie thread's as the root, `/`).
pub fn other_live_thread(pid: i32) -> Option<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .find(|&tid| tid != pid && thread_state(pid, tid).is_some_and(|s| s != 'Z'))
}

/// The containers of `uid` (as published) in `metrics`.
pub fn containers_of(metrics: &str, uid: u32) -> usize {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("apptheus_container_info{") && l.contains(&format!("uid=\"{uid}\""))
        })
        .count()
}

/// Launcher connections refused for `reason` in `metrics`.
pub fn rejections(metrics: &str, reason: &str) -> f64 {
    sample(
        metrics,
        "apptheus_gateway_rejections_total",
        &format!("reason=\"{reason}\""),
    )
    .unwrap_or(0.0)
}

/// All pids descending from `root` (a /proc scan), root excluded.
pub fn descendants(root: i32) -> Vec<i32> {
    let mut parent = std::collections::HashMap::new();
    for p in procfs::process::all_processes().expect("/proc").flatten() {
        if let Ok(st) = p.stat() {
            parent.insert(st.pid, st.ppid);
        }
    }
    parent
        .keys()
        .copied()
        .filter(|&p| {
            let mut cur = p;
            for _ in 0..64 {
                match parent.get(&cur) {
                    Some(&pp) if pp == root => return true,
                    Some(&pp) if pp > 1 => cur = pp,
                    _ => return false,
                }
            }
            false
        })
        .collect()
}

/// The mount point of the v1 hierarchy holding `controller`, or of the unified tree for "";
/// `None` where there is none (a v1 controller on a pure v2 machine: see `cgroups::mount_of`
/// for the hierarchy that holds a controller whatever the layout).
pub fn mount_of(controller: &str) -> Option<PathBuf> {
    cgroups::hierarchies()
        .into_iter()
        .find(|h| {
            if controller.is_empty() {
                h.v2
            } else {
                !h.v2 && h.controllers.iter().any(|c| c == controller)
            }
        })
        .map(|h| h.mount_point)
}

/// The directory of `pid`'s cgroup in the hierarchy of `controller` ("" for the unified tree).
pub fn cgroup_dir_of(pid: i32, controller: &str) -> Option<PathBuf> {
    let mount = mount_of(controller)?;
    let rel = cgroup_of(pid, controller)?;
    Some(mount.join(rel.trim_start_matches('/')))
}
