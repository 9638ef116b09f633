//! A real, private, single-node Slurm cluster for the tests (Debian's Slurm 22.05 and munge,
//! installed by `cargo xtask setup --test`; a missing one fails the test with what to install).
//!
//! `Slurm::start()` makes everything in a temporary directory: a munge key and its own munged,
//! `slurm.conf` and `cgroup.conf` with free ports and a node name unique to the instance, and
//! starts munged, `slurmctld -D` and `slurmd -D -N <node>`. Debian builds Slurm with
//! multiple-slurmd support, so the node name is in every cgroup path Slurm makes:
//! `/sys/fs/cgroup/<ctrl>/slurm_<node>/uid_<uid>/job_<id>/step_<n>/task_<t>` with cgroup/v1,
//! `/sys/fs/cgroup/system.slice/<node>_slurmstepd.scope/job_<id>/step_<n>/user/task_<t>` with
//! cgroup/v2. Parallel tests and leftovers of earlier runs therefore never share a cgroup.
//! On pure v2 without systemd (the VM guests) the harness plays systemd's part first
//! (`SystemdRole`: system.slice with its controllers, slurmd in a service cgroup).
//! Dropping it stops the daemons by pid, ends what is left of its jobs (the processes in its own
//! cgroups, by pid), removes its cgroups and the directory.
use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use super::{prometheus::tool, require_root, static_port};

/// How the host mounts cgroups (from /proc/self/mountinfo).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// v1 controllers, with or without a unified tree beside them (hybrid): Slurm's cgroup/v1.
    V1,
    /// Only cgroup2 at /sys/fs/cgroup: Slurm's cgroup/v2, without systemd.
    V2,
}

impl Layout {
    pub fn detect() -> Layout {
        let info = std::fs::read_to_string("/proc/self/mountinfo").expect("/proc/self/mountinfo");
        let mut v1 = false;
        let mut v2_at_root = false;
        for line in info.lines() {
            // ... mount-point ... - fstype source options
            let fields: Vec<&str> = line.split(' ').collect();
            let Some(sep) = fields.iter().position(|f| *f == "-") else {
                continue;
            };
            let (mount_point, fstype) = (fields[4], fields.get(sep + 1).copied().unwrap_or(""));
            match fstype {
                "cgroup" => v1 = true,
                "cgroup2" if mount_point == "/sys/fs/cgroup" => v2_at_root = true,
                _ => {}
            }
        }
        match (v1, v2_at_root) {
            (true, _) => Layout::V1,
            (false, true) => Layout::V2,
            (false, false) => panic!(
                "no cgroup hierarchy mounted (neither cgroup v1 controllers nor cgroup2 at /sys/fs/cgroup): Slurm's cgroup plugins need one"
            ),
        }
    }
}

/// A running private cluster: munged, slurmctld, one slurmd.
pub struct Slurm {
    /// The cluster's directory: configuration, state, spool, logs, munge key and socket.
    pub dir: tempfile::TempDir,
    /// This instance's node name (also the cluster name's suffix).
    pub node: String,
    pub conf: PathBuf,
    pub layout: Layout,
    /// The first job id this cluster gives.
    pub first_job_id: u32,
    munged: Child,
    slurmctld: Child,
    slurmd: Child,
    /// On v2: the cgroups systemd would have made (removed at the end).
    systemd: Option<SystemdRole>,
    /// With accounting: its MariaDB and slurmdbd.
    accounting: Option<Accounting>,
    /// One cluster at a time in a test process (see `ONE_AT_A_TIME`); released last.
    _turn: std::sync::MutexGuard<'static, ()>,
}

/// The clusters of one test process take turns: a node runs one slurmd, and the timings the
/// tests check (Slurm removes a job's cgroups milliseconds after its end, and the daemon's own
/// directory must be gone before) are a node's, not those of eight clusters and their daemons
/// sharing two cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A name unique to this process, this instance and this moment: a leftover of an earlier run
/// (a crashed test's cgroups, state) never has it.
fn unique_node() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis()
        % 1_000_000;
    format!("at{}n{n}t{t}", std::process::id())
}

fn short_hostname() -> String {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("host name");
    let h = h.trim();
    let short = h.split('.').next().unwrap_or_default().to_string();
    assert!(
        !short.is_empty()
            && short
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "slurmctld runs only on the host named in SlurmctldHost, its short host name; {h:?} cannot be written there: give the machine a plain host name"
    );
    short
}

/// `slurmd -C`'s description of this machine: `CPUs=2 Boards=1 ... RealMemory=24105`.
fn node_hardware(slurmd: &Path) -> String {
    let out = Command::new(slurmd)
        .arg("-C")
        .stdin(Stdio::null())
        .output()
        .expect("slurmd -C");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("NodeName="))
        .unwrap_or_else(|| {
            panic!(
                "slurmd -C printed no NodeName line ({}):\n{text}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        });
    // Drop NodeName=<host>: this cluster names its node itself.
    let hw: Vec<&str> = line
        .split_whitespace()
        .filter(|f| {
            [
                "CPUs=",
                "Boards=",
                "SocketsPerBoard=",
                "CoresPerSocket=",
                "ThreadsPerCore=",
                "RealMemory=",
            ]
            .iter()
            .any(|k| f.starts_with(k))
        })
        .collect();
    assert!(
        hw.iter().any(|f| f.starts_with("CPUs="))
            && hw.iter().any(|f| f.starts_with("RealMemory=")),
        "slurmd -C: no CPUs/RealMemory in {line:?}"
    );
    hw.join(" ")
}

fn spawn_logged(cmd: &mut Command, log: &Path) -> Child {
    let out = std::fs::File::create(log).expect("log file");
    let err = out.try_clone().expect("log file");
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
}

/// A daemon that `start` spawned, stopped if dropped before the cluster holds it: a start that
/// fails half-way leaves nothing running.
struct Starting(Option<Child>);

impl Starting {
    fn into_child(mut self) -> Child {
        self.0.take().expect("a started daemon is taken once")
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            stop_child(c, Duration::from_secs(5));
        }
    }
}

/// SIGTERM `child`, then SIGKILL if it has not exited within `grace`; reap it.
fn stop_child(child: &mut Child, grace: Duration) {
    if child.try_wait().ok().flatten().is_some() {
        return;
    }
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let end = Instant::now() + grace;
    while Instant::now() < end {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Every directory under `dir`, `dir` included, deepest first.
fn tree_deepest_first(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
        out.push(d);
    }
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out
}

/// The part of systemd on a pure-v2 node that Slurm relies on, played by the harness where no
/// systemd runs (the VM guests):
/// - `system.slice` exists, with the controllers systemd enables there (cpuset, cpu, io,
///   memory, pids: every one the root offers) enabled for its children;
/// - slurmd runs in a service cgroup of its own below it (`<node>_slurmd.service`), with
///   `INVOCATION_ID` set, as systemd starts `slurmd.service`. Started by hand instead, slurmd
///   moves itself into `<scope>/slurmd`, a cgroup whose controllers are only those Slurm
///   enabled (cpuset cpu memory): Slurm 22.05 splits `cgroup.controllers` on spaces only, so
///   the last name keeps its newline and is never recognized, memory is that last name there,
///   and slurmd stops with "Controller memory is not enabled!" and "ConstrainSwapSpace is
///   enabled but there is no support for swap". With systemd's controllers, pids comes last.
///
/// `IgnoreSystemd=yes` then makes slurmd create the stepd scope with a plain mkdir where it
/// would ask systemd over D-Bus; the scope's path is the same.
struct SystemdRole {
    /// /sys/fs/cgroup/system.slice, when this instance made it.
    made_slice: Option<PathBuf>,
    /// slurmd's service cgroup.
    service: PathBuf,
    invocation_id: String,
}

impl SystemdRole {
    fn new(node: &str) -> SystemdRole {
        let root = Path::new("/sys/fs/cgroup");
        let slice = root.join("system.slice");
        let made_slice = (!slice.exists()).then(|| {
            std::fs::create_dir(&slice).expect("mkdir /sys/fs/cgroup/system.slice");
            slice.clone()
        });
        for dir in [root, slice.as_path()] {
            let offered =
                std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
            for c in ["cpuset", "cpu", "io", "memory", "pids"] {
                if offered.split_whitespace().any(|o| o == c) {
                    std::fs::write(dir.join("cgroup.subtree_control"), format!("+{c}"))
                        .unwrap_or_else(|e| {
                            panic!(
                                "enabling {c} in {}/cgroup.subtree_control: {e}",
                                dir.display()
                            )
                        });
                }
            }
        }
        let service = slice.join(format!("{node}_slurmd.service"));
        std::fs::create_dir(&service).expect("mkdir slurmd's service cgroup");
        SystemdRole {
            made_slice,
            service,
            invocation_id: format!("{:032x}", rand_u128()),
        }
    }

    /// Remove the service cgroup (once slurmd has left it) and a slice this instance made (if
    /// no other instance uses it: EBUSY then).
    fn remove(&self) {
        let end = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.service).is_err()
            && self.service.exists()
            && Instant::now() < end
        {
            for pid in super::cgroups::procs(&self.service) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(slice) = &self.made_slice {
            let _ = std::fs::remove_dir(slice);
        }
    }
}

/// 128 random bits (an INVOCATION_ID).
fn rand_u128() -> u128 {
    let mut bytes = [0u8; 16];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").expect("/dev/urandom"),
        &mut bytes,
    )
    .expect("random bytes");
    u128::from_ne_bytes(bytes)
}

impl Slurm {
    /// Build and start a private cluster; returns once `sinfo` shows its node idle.
    pub fn start() -> Slurm {
        Self::start_with("")
    }

    /// Like `start`, with `extra` lines appended to slurm.conf (e.g. `PrologFlags=Contain`).
    pub fn start_with(extra: &str) -> Slurm {
        Self::start_full(extra, false)
    }

    /// Like `start_with`, with Slurm's accounting: a MariaDB of its own (data in the cluster's
    /// directory), slurmdbd on it, the cluster registered (`sacctmgr add cluster`) before
    /// slurmctld starts. `sacct` then answers for this cluster's jobs.
    pub fn start_accounted(extra: &str) -> Slurm {
        Self::start_full(extra, true)
    }

    fn start_full(extra: &str, accounted: bool) -> Slurm {
        require_root();
        // A test that failed while holding it does not stop the others.
        let turn = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let slurmctld_bin = tool("slurmctld", "slurmctld");
        let slurmd_bin = tool("slurmd", "slurmd");
        let munged_bin = tool("munged", "munge");
        tool("srun", "slurm-client");
        let layout = Layout::detect();
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        // munged checks that every directory above its socket can be entered by all, and that
        // the socket's own directory is 0755.
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        for sub in ["munge", "state", "spool", "log"] {
            std::fs::create_dir(d.join(sub)).expect("mkdir");
            std::fs::set_permissions(d.join(sub), std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
        }
        let node = unique_node();
        let host = short_hostname();

        // munge: a fresh key, read by root only.
        let key = d.join("munge.key");
        let mut bytes = [0u8; 128];
        std::io::Read::read_exact(
            &mut std::fs::File::open("/dev/urandom").expect("/dev/urandom"),
            &mut bytes,
        )
        .expect("random key");
        std::fs::write(&key, bytes).expect("munge key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).expect("chmod");
        let socket = d.join("munge/munge.sock");
        let munged = Starting(Some(spawn_logged(
            Command::new(&munged_bin)
                .arg("--foreground")
                .arg(format!("--socket={}", socket.display()))
                .arg(format!("--key-file={}", key.display()))
                .arg(format!(
                    "--pid-file={}",
                    d.join("munge/munged.pid").display()
                ))
                .arg(format!("--log-file={}", d.join("log/munged.log").display()))
                .arg(format!(
                    "--seed-file={}",
                    d.join("munge/munged.seed").display()
                )),
            &d.join("log/munged.out"),
        )));

        // Slurm reads its ports from slurm.conf: no port 0 (see `static_port`).
        let (ctld_port, slurmd_port) = (static_port(), static_port());
        // Job ids from the clock (10 ms steps), so ids of earlier runs (kernel log, leftover
        // directories) do not come back. MaxJobId is 67043328 by default.
        let first_job_id = 1000
            + (SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock")
                .as_millis()
                / 10
                % 60_000_000) as u32;
        let hw = node_hardware(&slurmd_bin);
        let dbd_port = static_port();
        let accounting_conf = if accounted {
            format!(
                "AccountingStorageType=accounting_storage/slurmdbd\n\
                 AccountingStorageHost=127.0.0.1\n\
                 AccountingStoragePort={dbd_port}\n\
                 AccountingStoragePass={}",
                socket.display()
            )
        } else {
            "AccountingStorageType=accounting_storage/none".to_string()
        };
        let conf = d.join("slurm.conf");
        let p = |s: &str| d.join(s).display().to_string();
        std::fs::write(
            &conf,
            format!(
                "# A private test cluster (apptheus/tests/common/slurm.rs)\n\
                 ClusterName=c{node}\n\
                 SlurmctldHost={host}(127.0.0.1)\n\
                 SlurmctldPort={ctld_port}\n\
                 SlurmdPort={slurmd_port}\n\
                 SlurmUser=root\n\
                 SlurmdUser=root\n\
                 AuthType=auth/munge\n\
                 AuthInfo=socket={socket}\n\
                 StateSaveLocation={state}\n\
                 SlurmdSpoolDir={spool}\n\
                 SlurmctldPidFile={ctld_pid}\n\
                 SlurmdPidFile={slurmd_pid}\n\
                 SlurmctldLogFile={ctld_log}\n\
                 SlurmdLogFile={slurmd_log}\n\
                 SlurmctldDebug=info\n\
                 SlurmdDebug=debug\n\
                 DebugFlags=CGroup\n\
                 FirstJobId={first_job_id}\n\
                 MailProg=/bin/true\n\
                 MpiDefault=none\n\
                 ReturnToService=2\n\
                 SchedulerType=sched/backfill\n\
                 SelectType=select/cons_tres\n\
                 SelectTypeParameters=CR_Core_Memory\n\
                 ProctrackType=proctrack/cgroup\n\
                 TaskPlugin=task/affinity,task/cgroup\n\
                 JobAcctGatherType=jobacct_gather/cgroup\n\
                 {accounting_conf}\n\
                 JobCompType=jobcomp/none\n\
                 NodeName={node} NodeAddr=127.0.0.1 {hw} State=UNKNOWN\n\
                 PartitionName=test Nodes={node} Default=YES MaxTime=INFINITE State=UP\n\
                 {extra}\n",
                socket = socket.display(),
                state = p("state"),
                spool = p("spool"),
                ctld_pid = p("slurmctld.pid"),
                slurmd_pid = p("slurmd.pid"),
                ctld_log = p("log/slurmctld.log"),
                slurmd_log = p("log/slurmd.log"),
            ),
        )
        .expect("slurm.conf");
        let cgroup_conf = match layout {
            Layout::V1 => "CgroupPlugin=cgroup/v1\n",
            // No systemd to ask for a delegated scope: Slurm makes its directories itself and
            // enables the controllers it needs (documented for testing).
            Layout::V2 => "CgroupPlugin=cgroup/v2\nIgnoreSystemd=yes\nCgroupAutomount=yes\n",
        };
        std::fs::write(
            d.join("cgroup.conf"),
            format!(
                "{cgroup_conf}ConstrainRAMSpace=yes\nConstrainSwapSpace=yes\nConstrainCores=yes\n"
            ),
        )
        .expect("cgroup.conf");
        // cgroup/v2: what systemd does on a real pure-v2 node, done here (no systemd in the VM
        // guests): see `SystemdRole`.
        let systemd = (layout == Layout::V2).then(|| SystemdRole::new(&node));
        // The daemons start only once munged answers (slurmctld needs it at once).
        let munge_up = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(
                Instant::now() < munge_up,
                "munged did not create {} within 10 s:\n{}",
                socket.display(),
                std::fs::read_to_string(d.join("log/munged.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let accounting =
            accounted.then(|| Accounting::start(d, &socket, dbd_port, &conf, &format!("c{node}")));
        let slurmctld = Starting(Some(spawn_logged(
            Command::new(&slurmctld_bin)
                .arg("-D")
                .arg("-f")
                .arg(&conf)
                .env("SLURM_CONF", &conf),
            &d.join("log/slurmctld.out"),
        )));
        let mut slurmd_cmd = match &systemd {
            // Started the way systemd starts slurmd.service: in its own service cgroup, with
            // INVOCATION_ID set (slurmd then stays there, as on a production node).
            Some(role) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!(
                        "echo $$ > {}/cgroup.procs && exec \"$0\" \"$@\"",
                        role.service.display()
                    ))
                    .arg(&slurmd_bin)
                    .env("INVOCATION_ID", &role.invocation_id);
                c
            }
            // cgroup/v1 does not care where slurmd is.
            None => Command::new(&slurmd_bin),
        };
        slurmd_cmd
            .args(["-D", "-N", &node, "-f"])
            .arg(&conf)
            .env("SLURM_CONF", &conf);
        let slurmd = spawn_logged(&mut slurmd_cmd, &d.join("log/slurmd.out"));
        let mut s = Slurm {
            dir,
            node,
            conf,
            layout,
            first_job_id,
            munged: munged.into_child(),
            slurmctld: slurmctld.into_child(),
            slurmd,
            systemd,
            accounting,
            _turn: turn,
        };
        s.wait_idle();
        s
    }

    /// Poll `sinfo` until the node is idle (30 s at most); a daemon that exits fails the test
    /// with its log.
    fn wait_idle(&mut self) {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let exited = [
                ("munged", &mut self.munged),
                ("slurmctld", &mut self.slurmctld),
                ("slurmd", &mut self.slurmd),
            ]
            .into_iter()
            .find_map(|(name, child)| Some((name, child.try_wait().ok().flatten()?)));
            if let Some((name, st)) = exited {
                panic!(
                    "{name} exited at start ({st}):\n{}",
                    self.logs_for_failure()
                );
            }
            let out = self
                .command("sinfo")
                .args(["-h", "-n", &self.node, "-o", "%t"])
                .output()
                .expect("sinfo");
            let last = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if out.status.success() && last.trim() == "idle" {
                return;
            }
            if Instant::now() > end {
                panic!(
                    "node {} not idle within 30 s (sinfo: {last:?}):\n{}",
                    self.node,
                    self.logs_for_failure()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join("log").join(name)).unwrap_or_default()
    }

    /// Everything the daemons logged, for a failure message.
    pub fn logs_for_failure(&self) -> String {
        [
            "munged.log",
            "munged.out",
            "slurmctld.out",
            "slurmctld.log",
            "slurmd.out",
            "slurmd.log",
            "slurmdbd.log",
            "mariadb.err",
        ]
        .iter()
        .map(|n| format!("--- {n}:\n{}", self.log(n)))
        .collect::<Vec<_>>()
        .join("\n")
    }

    pub fn slurmd_log(&self) -> String {
        self.log("slurmd.log")
    }

    pub fn slurmctld_log(&self) -> String {
        self.log("slurmctld.log")
    }

    /// The lines of slurmd's log (`DebugFlags=CGroup`) that say a step's or task's cgroup
    /// directory of `job_id` could not be removed: "Cannot rmdir(<dir>), cgroup is not empty"
    /// and "Unable to rmdir(<dir>), did 5 retries" (both plugins), "taskid: 0, failed to delete
    /// <dir> Device or resource busy" (v1), "Failed to delete <dir>" (v2; its step-level
    /// "unable to remove ..." is debug2, not in this log level). A failed rmdir of `job_<id>`
    /// itself is not one: every step that ends tries it, and while another step of the job
    /// (the batch step, the extern step) still runs it fails, as it should ("Cannot
    /// rmdir(.../job_<id>), cgroup is not empty").
    pub fn rmdir_failures(&self, job_id: u32) -> Vec<String> {
        let below_job = format!("job_{job_id}/");
        self.slurmd_log()
            .lines()
            .filter(|l| l.contains(&below_job))
            .filter(|l| {
                [
                    "Cannot rmdir",
                    "Unable to rmdir",
                    "failed to delete",
                    "Failed to delete",
                    "unable to remove",
                ]
                .iter()
                .any(|k| l.contains(k))
            })
            .map(str::to_owned)
            .collect()
    }

    /// A command of this cluster's: `SLURM_CONF` is its configuration; SLURM_* variables of the
    /// environment the test runs in (a test run inside a job) are dropped; stdin is null.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(tool(program, "slurm-client"));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SLURM_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("SLURM_CONF", &self.conf).stdin(Stdio::null());
        cmd
    }

    /// `srun ARGS...` to completion.
    pub fn srun(&self, args: &[&str]) -> Output {
        self.command("srun").args(args).output().expect("srun")
    }

    /// `srun --job-name=<unique> ARGS...` to completion: the job's id and srun's output.
    pub fn srun_job(&self, args: &[&str]) -> (u32, Output) {
        let name = super::unique("srun");
        let out = self
            .command("srun")
            .arg(format!("--job-name={name}"))
            .args(args)
            .output()
            .expect("srun");
        let id = self.job_id(&name).unwrap_or_else(|| {
            panic!(
                "srun job {name} unknown to slurmctld after it ran: {out:?}\n{}",
                self.slurmctld_log()
            )
        });
        (id, out)
    }

    /// `srun --job-name=<unique> ARGS...` in the background: the name (see `job_id`) and srun.
    pub fn spawn_srun(&self, args: &[&str]) -> (String, Child) {
        let name = super::unique("srun");
        let child = self
            .command("srun")
            .arg(format!("--job-name={name}"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("srun");
        (name, child)
    }

    /// `sbatch --parsable ARGS... SCRIPT`: the job id.
    pub fn sbatch(&self, script: &Path, args: &[&str]) -> u32 {
        let out = self
            .command("sbatch")
            .arg("--parsable")
            .args(args)
            .arg(script)
            .output()
            .expect("sbatch");
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim()
            .split(';')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "sbatch printed no job id ({}): {text}\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                )
            })
    }

    /// The id of the job named `name` (running or ended; slurmctld keeps ended jobs for
    /// MinJobAge, 300 s).
    pub fn job_id(&self, name: &str) -> Option<u32> {
        let out = self
            .command("squeue")
            .args(["-h", "-t", "all", "-n", name, "-o", "%i"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// The job's state as slurmctld has it (`RUNNING`, `COMPLETED`, `OUT_OF_MEMORY`, ...).
    pub fn job_state(&self, job_id: u32) -> Option<String> {
        let out = self
            .command("squeue")
            .args(["-h", "-t", "all", "-j", &job_id.to_string(), "-o", "%T"])
            .output()
            .ok()?;
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!s.is_empty()).then_some(s)
    }

    /// Where this cluster's cgroups are: `<hierarchy>/slurm_<node>` for every v1 hierarchy that
    /// has one, or `/sys/fs/cgroup/system.slice/<node>_slurmstepd.scope` on v2.
    pub fn cgroup_roots(&self) -> Vec<PathBuf> {
        let mut roots = Vec::new();
        let base = Path::new("/sys/fs/cgroup");
        if let Ok(rd) = std::fs::read_dir(base) {
            for e in rd.flatten() {
                let r = e.path().join(format!("slurm_{}", self.node));
                if r.is_dir() {
                    roots.push(r);
                }
            }
        }
        let scope = base.join(format!("system.slice/{}_slurmstepd.scope", self.node));
        if scope.is_dir() {
            roots.push(scope);
        }
        roots.sort();
        roots
    }

    /// Every cgroup directory of the job, in every hierarchy: `job_<id>` and all below it.
    pub fn job_cgroups(&self, job_id: u32) -> Vec<PathBuf> {
        let name = format!("job_{job_id}");
        let mut out: Vec<PathBuf> = self
            .cgroup_roots()
            .iter()
            .flat_map(|r| super::find_dirs(r, &name))
            .flat_map(|j| tree_deepest_first(&j))
            .collect();
        out.sort();
        out
    }

    /// Wait until slurmctld no longer runs the job and none of its cgroups is left: how long
    /// that took, or what is left after `timeout`.
    pub fn wait_job_gone(&self, job_id: u32, timeout: Duration) -> Result<Duration, Vec<PathBuf>> {
        let start = Instant::now();
        loop {
            let cgroups = self.job_cgroups(job_id);
            let running = self.job_state(job_id).is_some_and(|s| {
                [
                    "PENDING",
                    "CONFIGURING",
                    "RUNNING",
                    "COMPLETING",
                    "SUSPENDED",
                ]
                .contains(&s.as_str())
            });
            if cgroups.is_empty() && !running {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                return Err(cgroups);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The pids in every cgroup.procs under this cluster's cgroups.
    fn pids_in_cgroups(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .cgroup_roots()
            .iter()
            .flat_map(|r| tree_deepest_first(r))
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|t| {
                t.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        // Jobs still running (a failed test): end them through Slurm first.
        let _ = self
            .command("scancel")
            .args(["--full", "--partition=test"])
            .output();
        stop_child(&mut self.slurmd, Duration::from_secs(5));
        stop_child(&mut self.slurmctld, Duration::from_secs(5));
        // Before munged: slurmdbd's last messages need it.
        drop(self.accounting.take());
        stop_child(&mut self.munged, Duration::from_secs(5));
        // What is left in this cluster's own cgroups was started by its jobs (slurmstepds,
        // tasks): end it by pid, then remove the cgroups deepest first.
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            for pid in self.pids_in_cgroups() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            for root in self.cgroup_roots() {
                for d in tree_deepest_first(&root) {
                    let _ = std::fs::remove_dir(&d);
                }
            }
            if self.cgroup_roots().is_empty() || Instant::now() > end {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(role) = &self.systemd {
            role.remove();
        }
        // The temporary directory goes with `self.dir`.
    }
}

/// Slurm's accounting for a test cluster: a MariaDB on a loopback port (its data in the
/// cluster's directory, no grant tables: nothing but this cluster's slurmdbd can reach it) and
/// slurmdbd on it. Both are stopped when it is dropped (a start that fails included).
struct Accounting {
    mariadb: Child,
    slurmdbd: Child,
}

impl Drop for Accounting {
    fn drop(&mut self) {
        stop_child(&mut self.slurmdbd, Duration::from_secs(5));
        stop_child(&mut self.mariadb, Duration::from_secs(10));
    }
}

impl Accounting {
    /// Start both in `d`, then register `cluster` (sacctmgr, with slurm.conf `conf`), retried
    /// until slurmdbd answers (30 s at most).
    fn start(
        d: &Path,
        munge_socket: &Path,
        dbd_port: u16,
        conf: &Path,
        cluster: &str,
    ) -> Accounting {
        let mariadbd = tool("mariadbd", "mariadb-server");
        let install_db = tool("mariadb-install-db", "mariadb-server");
        let slurmdbd_bin = tool("slurmdbd", "slurmdbd");
        let data = d.join("db");
        let out = Command::new(&install_db)
            .args(["--no-defaults", "--user=root", "--skip-test-db"])
            .arg(format!("--datadir={}", data.display()))
            .stdin(Stdio::null())
            .output()
            .expect("mariadb-install-db");
        assert!(out.status.success(), "mariadb-install-db: {out:?}");
        let db_port = static_port();
        let mariadb = spawn_logged(
            Command::new(&mariadbd)
                .args(["--no-defaults", "--user=root", "--skip-grant-tables"])
                .arg("--bind-address=127.0.0.1")
                .arg(format!("--port={db_port}"))
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--socket={}", d.join("db.sock").display()))
                .arg(format!("--pid-file={}", d.join("db.pid").display()))
                .arg(format!(
                    "--log-error={}",
                    d.join("log/mariadb.err").display()
                )),
            &d.join("log/mariadb.out"),
        );
        let dbd_conf = conf.with_file_name("slurmdbd.conf");
        std::fs::write(
            &dbd_conf,
            format!(
                "AuthType=auth/munge\n\
                 AuthInfo=socket={munge}\n\
                 DbdHost=localhost\n\
                 DbdAddr=127.0.0.1\n\
                 DbdPort={dbd_port}\n\
                 SlurmUser=root\n\
                 DebugLevel=info\n\
                 LogFile={log}\n\
                 PidFile={pid}\n\
                 StorageType=accounting_storage/mysql\n\
                 StorageHost=127.0.0.1\n\
                 StoragePort={db_port}\n\
                 StorageUser=root\n\
                 StorageLoc=slurm_acct_{cluster}\n",
                munge = munge_socket.display(),
                log = d.join("log/slurmdbd.log").display(),
                pid = d.join("slurmdbd.pid").display(),
            ),
        )
        .expect("slurmdbd.conf");
        // slurmdbd refuses a configuration others can read (it holds the database's password).
        std::fs::set_permissions(&dbd_conf, std::fs::Permissions::from_mode(0o600))
            .expect("chmod slurmdbd.conf");
        let slurmdbd = spawn_logged(
            Command::new(&slurmdbd_bin)
                .arg("-D")
                .env("SLURM_CONF", conf),
            &d.join("log/slurmdbd.out"),
        );
        let mut a = Accounting { mariadb, slurmdbd };
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let out = Command::new(tool("sacctmgr", "slurm-client"))
                .args(["-i", "add", "cluster", cluster])
                .env("SLURM_CONF", conf)
                .stdin(Stdio::null())
                .output()
                .expect("sacctmgr");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if out.status.success() || text.contains("already exists") {
                return a;
            }
            let exited = [("mariadbd", &mut a.mariadb), ("slurmdbd", &mut a.slurmdbd)]
                .into_iter()
                .find_map(|(n, c)| Some((n, c.try_wait().ok().flatten()?)));
            let logs = || {
                ["mariadb.err", "slurmdbd.log", "slurmdbd.out"]
                    .iter()
                    .map(|n| {
                        format!(
                            "--- {n}:\n{}",
                            std::fs::read_to_string(d.join("log").join(n)).unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            if let Some((name, st)) = exited {
                panic!("{name} exited at start ({st}):\n{}", logs());
            }
            assert!(
                Instant::now() < end,
                "sacctmgr add cluster {cluster}: no answer from slurmdbd within 30 s ({text}):\n{}",
                logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
