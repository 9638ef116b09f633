//! Processes, cgroups, /proc readings and HTTP for the bench, and the guards that clean up after
//! it even when a phase fails: every process is ended by its pid, every cgroup removed by path.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};

/// Seconds since the epoch, as the daemon's `*_time_seconds` gauges count them.
pub fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

pub fn kill(pid: i32, sig: i32) {
    if pid > 1
        && let Ok(sig) = nix::sys::signal::Signal::try_from(sig)
    {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

/// A child process that is killed (by its pid) and reaped when dropped.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Proc> {
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({cmd:?})"))?;
        Ok(Proc { child })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, then SIGKILL after `grace`; reaps it.
    pub fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        if let Some(st) = self.exited() {
            return Some(st);
        }
        kill(self.pid(), libc::SIGTERM);
        let end = Instant::now() + grace;
        while Instant::now() < end {
            if let Some(st) = self.exited() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        kill(self.pid(), libc::SIGKILL);
        self.child.wait().ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            kill(self.pid(), libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// One monitored container: an `apptheus-exec` launcher and its sleeping child.
pub struct Container {
    pub launcher: Proc,
    pub spawned: SystemTime,
    /// The launcher's executable name: the container id's prefix.
    pub exe: &'static str,
    /// The process that connected, once known (see `id`).
    connected: std::cell::OnceCell<i32>,
}

impl Container {
    /// The launcher `cmd` (`exe` by name), started quiet, and when.
    pub fn spawn(exe: &'static str, cmd: &mut Command) -> Result<Container> {
        quiet(cmd);
        let spawned = SystemTime::now();
        let launcher = Proc::spawn(exe, cmd)?;
        Ok(Container {
            launcher,
            spawned,
            exe,
            connected: std::cell::OnceCell::new(),
        })
    }

    /// The container's id: `<exe>_<pid of the process that connected>`. apptheus-exec connects
    /// from its child (which then execs CMD) and waits outside: its id is the child's pid, known
    /// once the child exists (until then the launcher's, which no container has).
    pub fn id(&self) -> String {
        let pid = self.launcher.pid();
        let connected = match (self.exe, self.connected.get()) {
            (_, Some(&p)) => p,
            ("apptheus-exec", None) => match children(pid).first() {
                Some(&child) => *self.connected.get_or_init(|| child),
                None => pid,
            },
            _ => pid,
        };
        format!("{}_{connected}", self.exe)
    }

    /// Kill the launcher and its children by pid (the launcher first: it is in the container
    /// too, so the last exit is one of these two) and reap the launcher. Returns the wall-clock
    /// time just before the first kill.
    pub fn end(&mut self) -> SystemTime {
        let pid = self.launcher.pid();
        let kids = children(pid);
        let t = SystemTime::now();
        kill(pid, libc::SIGKILL);
        for k in kids {
            kill(k, libc::SIGKILL);
        }
        let _ = self.launcher.child.wait();
        t
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.launcher.exited().is_none() {
            self.end();
        }
    }
}

/// The direct children of `pid` (its main thread's; apptheus-exec forks from it): from the
/// kernel's children file, or, on a kernel without one (no CONFIG_PROC_CHILDREN, as this host's
/// 6.18), from the parent pids of a /proc listing.
pub fn children(pid: i32) -> Vec<i32> {
    if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        return text
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect();
    }
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|f| f.parse::<i32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

/// Whether this kernel has the children files (CONFIG_PROC_CHILDREN): what the daemon's
/// admission reads instead of listing /proc.
pub fn has_children_files() -> bool {
    let me = std::process::id();
    std::path::Path::new(&format!("/proc/{me}/task/{me}/children")).exists()
}

/// utime + stime of a process, dead threads included, in seconds.
pub fn cpu_seconds(pid: i32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may contain spaces: fields are counted after its closing parenthesis.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("garbled /proc/<pid>/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5) are the 12th and 13th after the name.
    let ticks: u64 = f
        .get(11)
        .zip(f.get(12))
        .and_then(|(u, s)| Some(u.parse::<u64>().ok()? + s.parse::<u64>().ok()?))
        .context("no utime/stime in /proc/<pid>/stat")?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100)
        .max(1) as f64;
    Ok(ticks as f64 / hz)
}

/// A field of /proc/<pid>/status in KiB (VmRSS, VmHWM).
pub fn status_kib(pid: i32, field: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

pub fn rss_mib(pid: i32) -> Result<f64> {
    Ok(status_kib(pid, "VmRSS")? as f64 / 1024.0)
}

/// Directories named `name` anywhere under /sys/fs/cgroup (every hierarchy).
pub fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![(PathBuf::from("/sys/fs/cgroup"), 0)];
    while let Some((d, depth)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let p = e.path();
                if e.file_name() == name {
                    out.push(p);
                } else if depth < 8 {
                    stack.push((p, depth + 1));
                }
            }
        }
    }
    out
}

/// rmdir a cgroup and its children, deepest first (only empty cgroups can go).
pub fn remove_cgroup_tree(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Removes every cgroup directory named `name` when dropped (the daemon removes its own; this
/// catches what a failed run left).
pub struct CgroupGuard(pub String);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        for _ in 0..50 {
            let dirs = cgroup_dirs(&self.0);
            if dirs.is_empty() {
                return;
            }
            dirs.iter().for_each(|d| remove_cgroup_tree(d));
            std::thread::sleep(Duration::from_millis(100));
        }
        let left = cgroup_dirs(&self.0);
        if !left.is_empty() {
            eprintln!("bench: could not remove cgroups {left:?}");
        }
    }
}

/// Sets a sysctl file and restores its old value when dropped.
pub struct Sysctl {
    path: PathBuf,
    old: String,
}

impl Sysctl {
    pub fn set(path: &str, value: &str) -> Result<Sysctl> {
        let old = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        std::fs::write(path, value).with_context(|| format!("writing {value} to {path}"))?;
        Ok(Sysctl {
            path: path.into(),
            old: old.trim().to_string(),
        })
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(&self.path, &self.old) {
            eprintln!("bench: cannot restore {}: {e}", self.path.display());
        }
    }
}

/// Raise RLIMIT_NOFILE to `n` for this process and what it starts, or as far as the hard limit
/// allows without CAP_SYS_RESOURCE. Returns the soft limit now.
pub fn raise_nofile(n: u64) -> Result<u64> {
    let mut now = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut now) } != 0 {
        bail!(
            "reading the open file limit: {}",
            std::io::Error::last_os_error()
        );
    }
    for limit in [
        libc::rlimit {
            rlim_cur: n,
            rlim_max: n.max(now.rlim_max),
        },
        libc::rlimit {
            rlim_cur: now.rlim_max,
            rlim_max: now.rlim_max,
        },
    ] {
        // SAFETY: setrlimit reads the struct we pass and nothing else.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } == 0 {
            return Ok(limit.rlim_cur);
        }
    }
    Ok(now.rlim_cur)
}

pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free port")?
        .port())
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// GET `url` (optionally asking for gzip): status and the raw body bytes.
pub fn get(agent: &ureq::Agent, url: &str, gzip: bool) -> Result<(u16, Vec<u8>)> {
    let mut req = agent.get(url);
    if gzip {
        req = req.header("Accept-Encoding", "gzip");
    }
    let mut resp = req.call().with_context(|| format!("GET {url}"))?;
    let body = resp
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_vec()
        .with_context(|| format!("reading the body of {url}"))?;
    Ok((resp.status().as_u16(), body))
}

/// The text at `url`, asked for with gzip as Prometheus asks for it: a plain request would make
/// the daemon render its uncompressed text, which no scraper of it needs (tens of MB at 10,000
/// containers), and that would weigh on the figures the bench reads meanwhile.
pub fn get_text(agent: &ureq::Agent, url: &str) -> Result<String> {
    let (status, body) = get(agent, url, true)?;
    if status != 200 {
        bail!("GET {url}: status {status}");
    }
    let body = if body.starts_with(&[0x1f, 0x8b]) {
        let mut text = Vec::with_capacity(body.len() * 8);
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut text)
            .with_context(|| format!("decoding the gzip body of {url}"))?;
        text
    } else {
        body
    };
    String::from_utf8(body).with_context(|| format!("{url} is not UTF-8"))
}

/// Every sample of `name` (exactly that name): its label text and value.
pub fn samples<'a>(text: &'a str, name: &str) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            Some((labels, value.trim().parse().ok()?))
        })
        .collect()
}

/// The value of label `key` in a label text `a="x",b="y"` (our ids and users need no unescaping).
pub fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{key}=\""))? + key.len() + 2;
    let len = labels[start..].find('"')?;
    Some(&labels[start..start + len])
}

/// Poll `f` every `every` until it returns Some or `timeout` passes.
pub fn eventually<T>(
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<Option<T>> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f()? {
            return Ok(Some(v));
        }
        if Instant::now() > end {
            return Ok(None);
        }
        std::thread::sleep(every);
    }
}

pub fn quiet(cmd: &mut Command) -> &mut Command {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
}

/// Median, min and max of some measurements.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Spread {
    pub fn of(values: &[f64]) -> Spread {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Spread {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
                n: 0,
            };
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Spread {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        }
    }

    /// The value at quantile `q` (nearest rank).
    pub fn quantile(values: &[f64], q: f64) -> f64 {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_by(f64::total_cmp);
        let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        v[i]
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({"median": self.median, "min": self.min, "max": self.max, "n": self.n})
    }
}
