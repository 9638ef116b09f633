//! The packages of `cargo xtask package`, for real, on this host: the .deb is installed with
//! dpkg, its files checked (list, owner, mode), the installed daemon run with a launcher through
//! it, the package upgraded to a rebuilt one of a higher revision while a changed
//! /etc/default/apptheus is kept, and purged, leaving nothing. The .rpm is read back with
//! `rpm -qlp` and `rpm -qp --scripts`.
//!
//! It packs the `dist` binaries `cargo xtask test` builds (with `xtask package --no-build`,
//! twice: revisions 1 and 2), and refuses to run where a package or a file named apptheus is
//! already installed: it would not be ours to purge (a hand-run daemon's state directory is set
//! aside and put back). A host-wide lock keeps two runs of it (two
//! work trees) from installing at the same time; everything else it starts has unique names.
//!
//! The installed unit is rated by `systemd-analyze security --offline=true` (its exposure must
//! stay at most `MAX_EXPOSURE`), and the installed daemon runs confined as the unit confines it
//! where no systemd is needed for that: the unit's capability bounding set, no new privileges,
//! a session of its own without a terminal, stdin /dev/null, with a launcher of another user.
//! The mount sandboxing (ProtectSystem=, PrivateDevices=, ...) needs systemd as PID 1 and is
//! only rated here, not run.
// Test code: a failed unwrap is a failed test, with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::{
    collections::BTreeSet,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::{Client, Daemon, Workload, eventually, listening_port, prometheus::tool, unique};

const PACKAGE: &str = "apptheus";
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Every file the .deb installs, with its mode; all belong to root:root.
const DEB_FILES: &[(&str, u32)] = &[
    ("/usr/bin/apptheus", 0o755),
    ("/usr/bin/apptheus-exec", 0o755),
    ("/usr/bin/apptheus-top", 0o755),
    ("/usr/bin/apptheus-report", 0o755),
    ("/usr/lib/systemd/system/apptheus.service", 0o644),
    ("/etc/default/apptheus", 0o644),
    ("/usr/share/apptheus/grafana/apptheus.json", 0o644),
    ("/usr/share/apptheus/prometheus/alerts.yml", 0o644),
    ("/usr/share/apptheus/prometheus/rules.yml", 0o644),
    ("/usr/share/apptheus/prometheus/prometheus.yml", 0o644),
    ("/usr/share/apptheus/prometheus/agent.yml", 0o644),
    ("/usr/share/apptheus/prometheus/central.yml", 0o644),
    ("/usr/share/apptheus/slurm/apptheus-epilog.sh", 0o755),
    ("/usr/share/apptheus/influxdb/agent.yml", 0o644),
    ("/usr/share/doc/apptheus/README.md", 0o644),
    ("/usr/share/doc/apptheus/guide.md", 0o644),
    ("/usr/share/doc/apptheus/users.md", 0o644),
    ("/usr/share/doc/apptheus/flags.md", 0o644),
    ("/usr/share/doc/apptheus/metrics.md", 0o644),
    ("/usr/share/doc/apptheus/platforms.md", 0o644),
    ("/usr/share/doc/apptheus/http.md", 0o644),
    ("/usr/share/doc/apptheus/glance.md", 0o644),
    ("/usr/share/doc/apptheus/security.md", 0o644),
    ("/usr/share/doc/apptheus/copyright", 0o644),
];

/// Every file of the .rpm: the same, but the flags file is /etc/sysconfig/apptheus and the
/// license is in /usr/share/licenses.
fn rpm_files() -> Vec<(&'static str, u32)> {
    DEB_FILES
        .iter()
        .map(|&(p, m)| match p {
            "/etc/default/apptheus" => ("/etc/sysconfig/apptheus", m),
            "/usr/share/doc/apptheus/copyright" => ("/usr/share/licenses/apptheus/LICENSE", m),
            _ => (p, m),
        })
        .collect()
}

/// Directories that are the package's alone: gone after the purge.
const OWN_DIRS: &[&str] = &[
    "/usr/share/apptheus",
    "/usr/share/doc/apptheus",
    "/var/lib/apptheus",
];

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    println!("$ {cmd:?} -> {}", out.status);
    for text in [&out.stdout, &out.stderr] {
        let t = String::from_utf8_lossy(text);
        if !t.trim().is_empty() {
            println!("{}", t.trim_end());
        }
    }
    out
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed: {}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// dpkg's state of the package: "installed", "config-files", ... or "not-installed".
fn dpkg_status() -> String {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", PACKAGE])
        .output()
        .expect("dpkg-query");
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if s.is_empty() {
        "not-installed".into()
    } else {
        s
    }
}

fn dpkg_version() -> String {
    ok(Command::new("dpkg-query").args(["-W", "-f=${Version}", PACKAGE]))
}

/// Holds the host-wide lock of this test (another work tree's run waits for it).
struct HostLock(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

fn host_lock() -> HostLock {
    let path = "/run/lock/apptheus-package-test.lock";
    let lock = eventually(Duration::from_secs(600), || {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("open {path}: {e}"));
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).ok()
    });
    HostLock(lock.unwrap_or_else(|| {
        panic!("{path} held for 10 minutes by another run of this test; is one stuck?")
    }))
}

/// Refuse to touch a host where apptheus is installed by someone else. The state directory of a
/// daemon run by hand (`cargo xtask run` uses the default, /var/lib/apptheus) is no reason to
/// refuse: it is set aside for the test and put back after it, unless a daemon holds it now.
fn refuse_foreign() -> StateAside {
    let status = dpkg_status();
    assert!(
        status == "not-installed",
        "a package named {PACKAGE} is already on this host (dpkg status {status:?}): this test \
         installs and purges its own; remove it first (dpkg --purge {PACKAGE}) or run the test \
         elsewhere"
    );
    let present: Vec<&str> = DEB_FILES
        .iter()
        .map(|(p, _)| *p)
        .chain(OWN_DIRS.iter().copied().filter(|d| *d != STATE_DIR))
        .chain(["/etc/sysconfig/apptheus"])
        .filter(|p| Path::new(p).symlink_metadata().is_ok())
        .collect();
    assert!(
        present.is_empty(),
        "files of an apptheus not installed by this test are on this host: {present:?}. The test \
         would overwrite and then purge them: remove them first, or run the test elsewhere"
    );
    StateAside::take()
}

const STATE_DIR: &str = "/var/lib/apptheus";
const STATE_ASIDE: &str = "/var/lib/apptheus.before-package-test";

/// A state directory that was here before the test, renamed out of the package's way; renamed
/// back when dropped (after the purge, which removes the package's own).
struct StateAside(bool);

impl StateAside {
    fn take() -> Self {
        assert!(
            Path::new(STATE_ASIDE).symlink_metadata().is_err(),
            "{STATE_ASIDE} is there: a run of this test was killed before it put the state \
             directory back. Move it back to {STATE_DIR} (or remove it), then run the test again"
        );
        if Path::new(STATE_DIR).symlink_metadata().is_err() {
            return Self(false);
        }
        // A daemon holds its state directory's lock for its life: its state is not moved.
        if let Ok(lock) = std::fs::File::open(format!("{STATE_DIR}/lock")) {
            assert!(
                nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok(),
                "an apptheus running on this host holds {STATE_DIR}: stop it, or run the test \
                 elsewhere"
            );
        }
        std::fs::rename(STATE_DIR, STATE_ASIDE)
            .unwrap_or_else(|e| panic!("set {STATE_DIR} aside as {STATE_ASIDE}: {e}"));
        println!("{STATE_DIR} (not the package's) set aside as {STATE_ASIDE} until the end");
        Self(true)
    }
}

impl Drop for StateAside {
    fn drop(&mut self) {
        if !self.0 {
            return;
        }
        if Path::new(STATE_DIR).symlink_metadata().is_ok() {
            // The package's own, if a failure left it before the purge: the one set aside wins.
            let _ = std::fs::remove_dir_all(STATE_DIR);
        }
        if let Err(e) = std::fs::rename(STATE_ASIDE, STATE_DIR) {
            eprintln!("cannot put {STATE_ASIDE} back as {STATE_DIR}: {e}");
        }
    }
}

/// Purges the package at the end, also when the test failed half-way.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        if dpkg_status() != "not-installed" {
            let _ = run(Command::new("dpkg").args(["--purge", PACKAGE]));
        }
    }
}

/// `xtask package --no-build --revision <rev> --out <dir>`: the .deb and the .rpm it made.
fn pack(revision: &str, out: &Path) -> (PathBuf, PathBuf, Duration) {
    let xtask = common::target_dir().join("xtask");
    assert!(
        xtask.is_file(),
        "{} is missing: run the suite with `cargo xtask test` (it builds xtask and the dist binaries)",
        xtask.display()
    );
    let start = Instant::now();
    ok(Command::new(&xtask)
        .args(["package", "--no-build", "--revision", revision])
        .arg("--out")
        .arg(out));
    let took = start.elapsed();
    let find = |suffix: &str| {
        std::fs::read_dir(out)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with(suffix))
            .unwrap_or_else(|| panic!("no *{suffix} in {}", out.display()))
    };
    (find(".deb"), find(".rpm"), took)
}

/// The maintainer scripts reload systemd where it runs and never start the service (their
/// comments, which tell the administrator what to run, aside).
fn check_scripts(what: &str, text: &str) {
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let text = code.as_str();
    assert!(
        text.contains("[ -d /run/systemd/system ]") && text.contains("systemctl daemon-reload"),
        "{what}: no guarded `systemctl daemon-reload`:\n{text}"
    );
    for forbidden in [
        "systemctl start",
        "systemctl restart",
        "try-restart",
        "reload-or-restart",
        "systemctl enable",
        "deb-systemd-invoke",
        "--now",
    ] {
        assert!(
            !text.contains(forbidden),
            "{what} contains {forbidden:?}: the packages must never start the service:\n{text}"
        );
    }
}

fn check_rpm(rpm: &Path) {
    let rpm_tool = tool("rpm", "rpm");
    let listed: BTreeSet<String> = ok(Command::new(&rpm_tool).arg("-qlp").arg(rpm))
        .lines()
        .map(str::to_owned)
        .collect();
    let want: BTreeSet<String> = rpm_files().iter().map(|(p, _)| p.to_string()).collect();
    assert_eq!(listed, want, "rpm -qlp {}", rpm.display());
    let fmt = "[%{FILENAMES}\t%{FILEMODES:perms}\t%{FILEUSERNAME}\t%{FILEGROUPNAME}\t%{FILEFLAGS:fflags}\n]";
    let table = ok(Command::new(&rpm_tool)
        .args(["-qp", "--queryformat", fmt])
        .arg(rpm));
    for (path, mode) in rpm_files() {
        let line = table
            .lines()
            .find(|l| l.split('\t').next() == Some(path))
            .unwrap_or_else(|| panic!("{path} not in the rpm's file table:\n{table}"));
        let f: Vec<&str> = line.split('\t').collect();
        let perms = if mode == 0o755 {
            "-rwxr-xr-x"
        } else {
            "-rw-r--r--"
        };
        assert_eq!(f[1], perms, "{path}: {line}");
        assert_eq!((f[2], f[3]), ("root", "root"), "{path}: {line}");
        if path == "/etc/sysconfig/apptheus" {
            // c: %config, n: noreplace.
            assert!(
                f[4].contains('c') && f[4].contains('n'),
                "{path} is not %config(noreplace): {line}"
            );
        }
    }
    let scripts = ok(Command::new(&rpm_tool).args(["-qp", "--scripts"]).arg(rpm));
    check_scripts("rpm -qp --scripts", &scripts);
    let version = ok(Command::new(&rpm_tool)
        .args(["-qp", "--queryformat", "%{VERSION}-%{RELEASE}"])
        .arg(rpm));
    assert_eq!(version, format!("{VERSION}-1"));
}

/// Processes running the installed daemon (the package must not have started one).
fn installed_daemons() -> Vec<i32> {
    procfs::process::all_processes()
        .expect("/proc")
        .flatten()
        .filter(|p| p.exe().is_ok_and(|e| e == Path::new("/usr/bin/apptheus")))
        .map(|p| p.pid)
        .collect()
}

fn check_installed_files() {
    let listed: BTreeSet<String> = ok(Command::new("dpkg").args(["-L", PACKAGE]))
        .lines()
        .map(str::to_owned)
        .collect();
    let files: BTreeSet<String> = listed
        .iter()
        .filter(|p| !Path::new(p).is_dir())
        .cloned()
        .collect();
    let want: BTreeSet<String> = DEB_FILES.iter().map(|(p, _)| p.to_string()).collect();
    assert_eq!(files, want, "the files dpkg -L lists");
    for (path, mode) in DEB_FILES {
        let m = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("stat {path}: {e}"));
        assert!(m.is_file(), "{path} is not a regular file");
        assert_eq!(
            (m.uid(), m.gid()),
            (0, 0),
            "{path} must belong to root:root"
        );
        assert_eq!(
            m.mode() & 0o7777,
            *mode,
            "{path}: mode {:o}",
            m.mode() & 0o7777
        );
    }
    let conffiles = ok(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", PACKAGE]));
    assert!(
        conffiles.contains("/etc/default/apptheus "),
        "/etc/default/apptheus is not a conffile: {conffiles:?}"
    );
    let unit = std::fs::read_to_string("/usr/lib/systemd/system/apptheus.service").unwrap();
    assert!(
        unit.contains("\nExecStart=/usr/bin/apptheus $APPTHEUS_ARGS\n"),
        "{unit}"
    );
    assert!(
        unit.contains("\nEnvironmentFile=-/etc/default/apptheus\n"),
        "{unit}"
    );
    let env = std::fs::read_to_string("/etc/default/apptheus").unwrap();
    assert!(
        env.lines()
            .any(|l| l.starts_with("APPTHEUS_ARGS=") && l.contains("/usr/bin/apptheus-exec")),
        "/etc/default/apptheus does not trust the packaged apptheus-exec:\n{env}"
    );
    // With its binary in place, the installed unit verifies as it is.
    let analyze = tool("systemd-analyze", "systemd");
    ok(Command::new(&analyze).args(["verify", UNIT]));
    check_unit_bounds(&unit);
    check_exposure(&analyze);
}

const UNIT: &str = "/usr/lib/systemd/system/apptheus.service";

/// The highest `systemd-analyze security` exposure the unit may have: 3.6 measured on
/// systemd 252 (6.3 before the hardening of issue 21), with room for a newer systemd that
/// rates the same options a little differently.
const MAX_EXPOSURE: f64 = 4.0;

/// The last value `key` is given in `unit` (as systemd reads it), if any.
fn unit_value<'a>(unit: &'a str, key: &str) -> Option<&'a str> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .next_back()
        .map(str::trim)
}

/// The unit restarts the daemon after every exit but `systemctl stop`, never gives up, gives it
/// no terminal and bounds what a user can make it consume.
fn check_unit_bounds(unit: &str) {
    let want = |key: &str, value: &str| {
        assert_eq!(
            unit_value(unit, key),
            Some(value),
            "{key}= in {UNIT}:\n{unit}"
        );
    };
    want("Restart", "always");
    want("StartLimitIntervalSec", "0");
    want("StandardInput", "null");
    want("PrivateDevices", "yes");
    assert!(
        unit_value(unit, "TTYPath").is_none(),
        "{UNIT} names a TTYPath"
    );
    assert!(
        unit_value(unit, "RestartSec").is_some(),
        "no RestartSec= in {UNIT}"
    );
    for key in ["MemoryMax", "TasksMax"] {
        let v = unit_value(unit, key).unwrap_or_else(|| panic!("no {key}= in {UNIT}"));
        assert!(v != "infinity", "{key}={v} in {UNIT}");
    }
    let oom: i32 = unit_value(unit, "OOMScoreAdjust")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric OOMScoreAdjust= in {UNIT}"));
    assert!(
        (-999..0).contains(&oom),
        "OOMScoreAdjust={oom}: negative, but not -1000 (never killed)"
    );
}

/// `systemd-analyze security --offline=true` of the installed unit (systemd 250+): its overall
/// exposure, printed, at most `MAX_EXPOSURE`.
fn check_exposure(analyze: &Path) {
    let out = run(Command::new(analyze).args(["security", "--offline=true", UNIT]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "systemd-analyze security --offline=true failed ({}; it needs systemd 250 or later):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // "→ Overall exposure level for apptheus.service: 3.5 OK 🙂"
    let exposure: f64 = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for apptheus.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure in:\n{text}"));
    println!(
        "systemd-analyze security: the unit's exposure is {exposure} (at most {MAX_EXPOSURE})"
    );
    assert!(
        exposure <= MAX_EXPOSURE,
        "the unit's exposure is {exposure}, above {MAX_EXPOSURE}: a hardening option was lost"
    );
}

/// Capability names in bit order (linux/capability.h), as the unit and /proc name them.
const CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The installed unit's CapabilityBoundingSet=, as a mask of capability bits.
fn unit_capabilities() -> u64 {
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let set = unit_value(&unit, "CapabilityBoundingSet")
        .unwrap_or_else(|| panic!("no CapabilityBoundingSet= in {UNIT}"));
    set.split_whitespace().fold(0, |mask, name| {
        let bit = CAPS
            .iter()
            .position(|c| *c == name)
            .unwrap_or_else(|| panic!("unknown capability {name} in {UNIT}"));
        mask | (1 << bit)
    })
}

/// Capability names of `mask`.
fn capability_names(mask: u64) -> Vec<&'static str> {
    (0..CAPS.len())
        .filter(|b| mask & (1 << b) != 0)
        .map(|b| CAPS[b])
        .collect()
}

/// A script that runs /usr/bin/apptheus confined as the unit confines it where that needs no
/// systemd: the unit's bounding set (root's capabilities after exec are that set), no new
/// privileges, a session of its own (no controlling terminal), stdin /dev/null, and the unit's
/// LimitMEMLOCK= and LimitNOFILE= where this host lets them be raised (the daemon cannot raise
/// them itself without CAP_SYS_RESOURCE; 5.10 charges eBPF maps to locked memory). Its session
/// is the one the tests give every daemon they start (`common::spawn_daemon`: setsid before
/// exec, as systemd does); it execs all the way, so the daemon keeps its pid.
fn confined_daemon(dir: &Path, caps: u64) -> PathBuf {
    let set: String = capability_names(caps)
        .iter()
        .map(|c| format!(",+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let limit = |key: &str| match unit_value(&unit, key) {
        Some("infinity") => "unlimited".to_string(),
        Some(v) => v.to_string(),
        None => panic!("no {key}= in {UNIT}"),
    };
    let (memlock, nofile) = (limit("LimitMEMLOCK"), limit("LimitNOFILE"));
    let script = dir.join("apptheus-confined");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nulimit -l {memlock} 2>/dev/null; ulimit -n {nofile} 2>/dev/null\n\
             exec setpriv --bounding-set=-all{set} --inh-caps=-all \
             --no-new-privs -- /usr/bin/apptheus \"$@\" </dev/null\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// One line of /proc/<pid>/status, e.g. `CapEff`.
fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

/// The installed apptheus-exec running the workload (`ready wait`) through the daemon at
/// `socket`: it holds its connection until `go`.
fn held_launcher(socket: &Path) -> Workload {
    let mut w = Workload::spawn_cmd(
        Command::new("/usr/bin/apptheus-exec")
            .arg(format!("--socket={}", socket.display()))
            .arg("--")
            .arg(common::workload_bin())
            .args(["ready", "wait"]),
    );
    w.ready();
    w
}

/// Wait until the daemon whose /metrics `metrics` reads has accepted `n` launchers (its
/// containers show from the sampling pass after).
fn accepted(n: f64, metrics: impl Fn() -> String, log: impl Fn() -> String) {
    eventually(Duration::from_secs(10), || {
        let m = metrics();
        common::sample(
            &m,
            "apptheus_gateway_connections_total",
            "outcome=\"accepted\"",
        )
        .filter(|v| *v == n)
    })
    .unwrap_or_else(|| {
        panic!(
            "the installed daemon did not accept the launcher:\n{}\n{}",
            metrics(),
            log()
        )
    });
}

/// The installed daemon, confined as the unit confines it (`confined_daemon`), with its own
/// socket, port, cgroup parent and state directory: a launcher through it becomes a container,
/// another user's launcher too (its /proc/<pid>/exe is readable only with CAP_SYS_PTRACE), and
/// `apptheus-exec -- true` runs its command.
fn run_installed_daemon() {
    let caps = unit_capabilities();
    let scripts = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_exe(
        &confined_daemon(scripts.path(), caps),
        &["--trust.path=/usr/bin/apptheus-exec"],
        &[],
        Client::plain(),
    );
    let pid = d.child.id();
    let eff = u64::from_str_radix(&status_field(pid, "CapEff"), 16).unwrap();
    println!(
        "the installed daemon runs with {:?}, no new privileges, in a session of its own",
        capability_names(eff)
    );
    assert_eq!(
        eff,
        caps,
        "the daemon's capabilities are not the unit's: {:?}",
        capability_names(eff)
    );
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    let sid = nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(pid as i32))).unwrap();
    assert_eq!(
        sid.as_raw(),
        pid as i32,
        "the daemon leads no session of its own"
    );
    let mut w = held_launcher(&d.socket);
    accepted(1.0, || d.metrics(), || d.log_text());
    // Another user's launcher (nobody): the trust check reads its /proc/<pid>/exe.
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut other = Workload::spawn_cmd(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg("/usr/bin/apptheus-exec")
            .arg(format!("--socket={}", d.socket.display()))
            .args(["--", "sleep", "600"]),
    );
    accepted(2.0, || d.metrics(), || d.log_text());
    let theirs = format!("container=\"apptheus-exec_{}\"", other.pid());
    let m = d.metrics_showing(&theirs);
    assert!(
        m.lines()
            .any(|l| l.starts_with("apptheus_container_info{") && l.contains(&theirs)),
        "nobody's container is not shown:\n{m}"
    );
    // apptheus-exec passes SIGTERM on to its sleep, and both end.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(other.pid()),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = other.child.wait();
    // Accepted first, shown from the sampling pass that follows.
    let shown = format!("container=\"apptheus-exec_{}\"", w.pid());
    let m = d.metrics_showing(&shown);
    assert!(
        m.contains(&shown) && m.contains("exe_path=\"/usr/bin/apptheus-exec\""),
        "the container of /usr/bin/apptheus-exec is not shown:\n{m}"
    );
    // The installed apptheus-top, as an unprivileged user, shows it too.
    let top = Command::new("runuser")
        .args(["-u", "nobody", "--", "/usr/bin/apptheus-top", "--once"])
        .arg(format!("--address=http://127.0.0.1:{}", d.port))
        .output()
        .expect("run /usr/bin/apptheus-top");
    let out = String::from_utf8_lossy(&top.stdout);
    assert!(
        top.status.success() && out.contains(&format!("apptheus-exec_{} ", w.pid())),
        "apptheus-top --once: {}\n{out}{}",
        top.status,
        String::from_utf8_lossy(&top.stderr)
    );
    w.go();
    assert!(w.wait().success());
    // A command that ends at once: it runs and its status comes back, whether or not the daemon
    // admitted the launcher before it ended (it may count as `vanished`).
    let st = Command::new("/usr/bin/apptheus-exec")
        .arg(format!("--socket={}", d.socket.display()))
        .args(["--", "true"])
        .status()
        .expect("run /usr/bin/apptheus-exec");
    assert!(st.success(), "apptheus-exec -- true: {st}");
    assert!(
        d.stop().success(),
        "the installed daemon did not stop cleanly"
    );
}

/// The upgraded daemon as the unit starts it: the package's default state directory
/// (/var/lib/apptheus, which purge must remove), its own socket, port and cgroup parent.
fn run_with_default_state_dir() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("gateway.sock");
    let log = dir.path().join("daemon.log");
    let parent = unique("apptheus-test-pkg");
    // Stopped by its pid at the end, whatever happens in between; then the cgroups it left go.
    struct Stop(std::process::Child, String);
    impl Drop for Stop {
        fn drop(&mut self) {
            if self.0.try_wait().ok().flatten().is_none() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
            for d in common::find_dirs(Path::new("/sys/fs/cgroup"), &self.1) {
                common::remove_cgroup_tree(&d);
            }
        }
    }
    let mut child = Stop(
        Command::new("/usr/bin/apptheus")
            // Port 0: the kernel picks a free one; the log says which.
            .arg("--web.listen-address=127.0.0.1:0")
            .arg(format!("--socket.path={}", socket.display()))
            .arg(format!("--cgroup.parent={parent}"))
            .arg("--trust.path=/usr/bin/apptheus-exec")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start /usr/bin/apptheus"),
        parent.clone(),
    );
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let port = eventually(Duration::from_secs(30), || listening_port(&log_text()))
        .unwrap_or_else(|| panic!("/usr/bin/apptheus does not listen:\n{}", log_text()));
    let client = Client::plain();
    let get = |path: &str| {
        client
            .agent
            .get(format!("http://127.0.0.1:{port}{path}"))
            .call()
            .ok()
            .and_then(|mut r| (r.status() == 200).then(|| r.body_mut().read_to_string().ok()))
            .flatten()
    };
    let ready = eventually(Duration::from_secs(30), || {
        if let Ok(Some(st)) = child.0.try_wait() {
            panic!("/usr/bin/apptheus exited ({st}):\n{}", log_text());
        }
        get("/-/ready").map(|_| ())
    });
    assert!(ready.is_some(), "not ready in 30 s:\n{}", log_text());
    // A container, so that the daemon has state to save.
    let mut w = held_launcher(&socket);
    accepted(1.0, || get("/metrics").unwrap_or_default(), log_text);
    w.go();
    assert!(w.wait().success());
    let pid = nix::unistd::Pid::from_raw(child.0.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let st = child.0.wait().unwrap();
    assert!(st.success(), "{st}:\n{}", log_text());
    let m = std::fs::metadata("/var/lib/apptheus").expect("/var/lib/apptheus made by the daemon");
    assert_eq!(m.mode() & 0o7777, 0o700);
    assert!(
        Path::new("/var/lib/apptheus/containers.json").is_file(),
        "no containers.json in /var/lib/apptheus:\n{}",
        log_text()
    );
}

#[test]
fn deb_installs_upgrades_and_purges_and_rpm_holds_the_same() {
    common::require_root();
    for (t, p) in [
        ("dpkg", "dpkg"),
        ("dpkg-deb", "dpkg"),
        ("dpkg-query", "dpkg"),
    ] {
        tool(t, p);
    }
    let start = Instant::now();
    let _lock = host_lock();
    let _aside = refuse_foreign();

    let work = tempfile::tempdir().unwrap();
    let (deb1, rpm1, took1) = pack("1", &work.path().join("r1"));
    let (deb2, _, took2) = pack("2", &work.path().join("r2"));
    println!(
        "packing (deb + rpm, no build): revision 1 {:.1} s, revision 2 {:.1} s",
        took1.as_secs_f64(),
        took2.as_secs_f64()
    );

    check_rpm(&rpm1);

    // The .deb's control files, before installing anything.
    let info = ok(Command::new("dpkg-deb").arg("--info").arg(&deb1));
    assert!(info.contains(&format!(" Version: {VERSION}-1\n")), "{info}");
    let ctrl = work.path().join("control");
    ok(Command::new("dpkg-deb")
        .arg("--control")
        .arg(&deb1)
        .arg(&ctrl));
    let conffiles = std::fs::read_to_string(ctrl.join("conffiles")).unwrap_or_default();
    assert_eq!(conffiles.trim(), "/etc/default/apptheus");
    let scripts: String = ["preinst", "postinst", "prerm", "postrm"]
        .iter()
        .filter_map(|s| std::fs::read_to_string(ctrl.join(s)).ok())
        .collect();
    check_scripts("the .deb's maintainer scripts", &scripts);

    // Install.
    let before = installed_daemons();
    assert!(
        before.is_empty(),
        "a /usr/bin/apptheus runs already: {before:?}"
    );
    let _installed = Installed;
    ok(Command::new("dpkg").arg("--install").arg(&deb1));
    assert_eq!(dpkg_status(), "installed");
    assert_eq!(dpkg_version(), format!("{VERSION}-1"));
    assert_eq!(
        installed_daemons(),
        Vec::<i32>::new(),
        "the install started the daemon"
    );
    check_installed_files();
    run_installed_daemon();

    // Upgrade, with the administrator's change to the flags file.
    let mark = format!("# changed by the package test {}", unique("pkg"));
    let env = std::fs::read_to_string("/etc/default/apptheus").unwrap();
    std::fs::write("/etc/default/apptheus", format!("{env}{mark}\n")).unwrap();
    ok(Command::new("dpkg").arg("--install").arg(&deb2));
    assert_eq!(dpkg_version(), format!("{VERSION}-2"));
    assert_eq!(
        installed_daemons(),
        Vec::<i32>::new(),
        "the upgrade started the daemon"
    );
    let kept = std::fs::read_to_string("/etc/default/apptheus").unwrap();
    assert!(
        kept.contains(&mark),
        "the upgrade replaced the changed /etc/default/apptheus"
    );
    for leftover in [".dpkg-dist", ".dpkg-new", ".dpkg-old"] {
        assert!(!Path::new(&format!("/etc/default/apptheus{leftover}")).exists());
    }
    check_installed_files();
    run_with_default_state_dir();

    // Purge: nothing left.
    ok(Command::new("dpkg").args(["--purge", PACKAGE]));
    assert_eq!(dpkg_status(), "not-installed");
    let left: Vec<&str> = DEB_FILES
        .iter()
        .map(|(p, _)| *p)
        .chain(OWN_DIRS.iter().copied())
        .filter(|p| Path::new(p).symlink_metadata().is_ok())
        .collect();
    assert!(left.is_empty(), "left after the purge: {left:?}");
    println!("package test: {:.1} s", start.elapsed().as_secs_f64());
}
