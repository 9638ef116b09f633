//! `cargo xtask vm`: run a command, or an integration test binary, inside a QEMU guest that
//! boots one of Debian's generic kernels (5.10, 6.1, 6.12) on **pure cgroup v2**, with the
//! host's file system shared read-only, the way aya's integration tests and virtme-ng do it.
//!
//! ```sh
//! cargo xtask vm --kernel 6.1 -- uname -r          # exits with the command's status
//! cargo xtask vm --kernel all --check              # the guest's facts, on every kernel
//! cargo xtask vm --kernel 5.10 --test tracker      # an integration test binary in the guest
//! cargo xtask vm --kernel 6.12 --test daemon -- exec_propagates   # with a test filter
//! cargo xtask vm --kernel all --test tracker,daemon                 # both in one boot per kernel
//! ```
//!
//! How it works:
//! 1. **Kernels** ([`kernels`], [`apt`]): `cargo xtask setup --test` installs QEMU
//!    (`qemu-system-x86`; on Debian 12 QEMU 10 from bookworm-backports through private apt lists,
//!    because machines of this kind carry `qemu-utils` 10 from there, which Breaks bookworm's
//!    QEMU 7.2), `busybox-static`, `kmod` (depmod) and `xz-utils`, and fetches the newest
//!    `linux-image-5.10.0-N-amd64` (bullseye, bullseye-security), `linux-image-6.1.0-N-amd64`
//!    (bookworm, bookworm-security) and `linux-image-6.12.N+deb12-amd64` (bookworm-backports,
//!    bookworm-security) with `apt-get download` through a private apt configuration (its own
//!    sources list, lists, cache and state under the cache directory, passed with `-o`: the
//!    host's apt sources are neither read nor changed). Each is extracted with `dpkg-deb -x` into
//!    `/var/cache/apptheus/vm/<series>/root` (machine-wide: it outlives a fresh clone, and is not
//!    under /tmp, where a guest mounts a tmpfs), indexed with `depmod -b`, and recorded in
//!    `<series>/manifest.json` (package, version, uname release, apt origin). Present kernels
//!    cost three small reads; `cargo xtask setup --refresh-kernels` fetches newer ones. The
//!    generic `-amd64` flavour, because the `-cloud-amd64` one has no 9p.
//! 2. **Initramfs** ([`initramfs`]): a newc cpio archive written in Rust with the static busybox,
//!    the modules of that very kernel for a 9p root over virtio-pci and an overlayfs (virtio_pci,
//!    9pnet_virtio, 9p, overlay and virtio_rng, with their dependencies from `modules.dep`:
//!    netfs, fscache, 9pnet, virtio, virtio_ring, virtio_pci_modern_dev/legacy_dev where that
//!    kernel has them; built-in ones skipped, `.ko.xz` decompressed), and a `/init`
//!    ([`guest::initramfs_init`]) that loads them, mounts the host's `/` read-only over 9p
//!    (`cache=loose`), puts a tmpfs-backed overlayfs on it (the guest can write anywhere: /var,
//!    /etc, /root...; nothing reaches the host), mounts tmpfs on its /run and the run's results
//!    directory (9p, read-write) at `/run/apptheus-vm`, and switch_roots into the overlay.
//! 3. **Guest init** ([`guest::guest_init`], a shell script generated per run into the results
//!    directory and run by `/bin/busybox sh` as PID 1): mounts proc, sysfs, devtmpfs, devpts,
//!    /dev/shm, cgroup2 at /sys/fs/cgroup, tracefs at /sys/kernel/tracing, debugfs, bpffs at
//!    /sys/fs/bpf, tmpfs on /tmp; bind-mounts the kernel's modules at /lib/modules/<release>
//!    (modprobe works); sets the hostname (and names it in /etc/hosts), brings up lo and a dummy
//!    interface with 192.0.2.1 (getaddrinfo's AI_ADDRCONFIG wants one), enables
//!    `cpu io memory pids` in the root's `cgroup.subtree_control`; runs the command as root in
//!    the requested directory (the workspace root by default: the same path as on the host)
//!    with exactly the given environment and stdin from /dev/null; writes its exit status to
//!    the results share, syncs and powers off.
//! 4. **QEMU** ([`qemu`]): `qemu-system-x86_64 -accel tcg,thread=multi -cpu max -smp 2 -m 4G
//!    -nodefaults -nographic -no-reboot`, the serial console on QEMU's stdout, which is copied
//!    line by line to `target/vm/<series>.log` and to our stdout; kernel command line
//!    `console=ttyS0 panic=-1 cgroup_no_v1=all systemd.unified_cgroup_hierarchy=1 ...`. The
//!    `/dev/kvm` of this project's machines is kvm_pvm, which runs no stock kernel, so TCG is
//!    the default and `--kvm` is for machines where KVM works. After `--timeout` seconds QEMU
//!    is killed by its pid; so it is if xtask fails while the guest runs.
//! 5. **Outcome** ([`Outcome`]): the command's status (None if the guest reported none), the time
//!    from QEMU's start to the guest init, the command's own time, the log's path.
//!    [`run`] is the reusable entry (`cargo xtask test` can call it per kernel);
//!    `--test SUITE[,SUITE...]` builds the daemon, its examples and `cargo test --no-run --test
//!    SUITE...`, takes the executables from cargo's JSON messages, runs them one after the other
//!    in one boot with `--test-threads=1` (and `--color=never`), and reads each one's `test
//!    result:` line, failed tests and panic messages from the console ([`suite::Verdict`]).
//!
//! Needs root (QEMU must read the whole host file system for the guest's root user).
//! Speed under TCG on 2 cores: a few seconds to the guest init; fork+exec and 9p reads are tens
//! of times slower than on the host, plain CPU work about the same.
pub mod apt;
pub mod guest;
pub mod initramfs;
pub mod kernels;
pub mod matrix;
pub mod qemu;
pub mod suite;

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};

pub use qemu::{Options, Outcome};

/// A kernel series of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Debian 11 (bullseye); close to the 5.14 of RHEL 9 in what the daemon uses.
    V5_10,
    /// Debian 12 (bookworm).
    V6_1,
    /// Debian 12's backported kernel (Debian 13's series).
    V6_12,
}

impl Kernel {
    pub const ALL: [Kernel; 3] = [Kernel::V5_10, Kernel::V6_1, Kernel::V6_12];

    pub fn series(self) -> &'static str {
        match self {
            Kernel::V5_10 => "5.10",
            Kernel::V6_1 => "6.1",
            Kernel::V6_12 => "6.12",
        }
    }

    /// `5.10`, `6.1`, `6.12`, or `all`.
    pub fn parse(s: &str) -> Result<Vec<Kernel>> {
        if s == "all" {
            return Ok(Kernel::ALL.to_vec());
        }
        Kernel::ALL
            .iter()
            .find(|k| k.series() == s)
            .map(|k| vec![*k])
            .with_context(|| format!("unknown kernel {s:?}: one of 5.10, 6.1, 6.12, all"))
    }

    /// For a package name of this series' generic image, a number that orders them by age (the
    /// ABI number, or the 6.12 point release); None for any other package.
    fn package_rank(self, name: &str) -> Option<u64> {
        let (prefix, suffix) = match self {
            Kernel::V5_10 => ("linux-image-5.10.0-", "-amd64"),
            Kernel::V6_1 => ("linux-image-6.1.0-", "-amd64"),
            Kernel::V6_12 => ("linux-image-6.12.", "+deb12-amd64"),
        };
        let n = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        n.parse().ok()
    }
}

/// Environment variables passed from the host into the guest's command when set.
const PASS_ENV: &[&str] = &[
    "RUST_BACKTRACE",
    "RUST_LIB_BACKTRACE",
    "RUST_LOG",
    "RUST_TEST_TIME_UNIT",
    "RUST_TEST_TIME_INTEGRATION",
    "CI",
];

/// The command's environment in the guest: a root login's basics, cargo's bin directory on
/// PATH, the variables of [`PASS_ENV`] that are set here, then `extra`.
pub fn guest_env(extra: &[(String, String)]) -> Vec<(String, String)> {
    let cargo_bin = crate::setup::path_with_cargo_bin();
    let first = std::env::split_paths(&cargo_bin)
        .next()
        .map(|p| p.display().to_string());
    let mut path = first.map(|p| format!("{p}:")).unwrap_or_default();
    path.push_str("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    let mut env: Vec<(String, String)> = [
        ("PATH", path.as_str()),
        ("HOME", "/root"),
        ("USER", "root"),
        ("LOGNAME", "root"),
        ("SHELL", "/bin/sh"),
        ("TERM", "dumb"),
        ("LANG", "C.UTF-8"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for k in PASS_ENV {
        if let Ok(v) = std::env::var(k) {
            env.push((k.to_string(), v));
        }
    }
    for (k, v) in extra {
        env.retain(|(have, _)| have != k);
        env.push((k.clone(), v.clone()));
    }
    env
}

/// Boot `kernel` and run `cmd` in the workspace root with `env` (see [`guest_env`]), at most
/// `timeout`; default options (TCG, 2 CPUs, 4 GiB, console echoed). The entry point of
/// `cargo xtask test`'s kernel matrix ([`matrix`]); `cargo xtask vm` itself calls qemu::run
/// with the options of its flags.
pub fn run(
    kernel: Kernel,
    cmd: &[String],
    env: &[(String, String)],
    timeout: Duration,
) -> Result<Outcome> {
    qemu::run(
        kernel,
        cmd,
        env,
        &crate::workspace_root(),
        timeout,
        &Options::default(),
    )
}

#[derive(clap::Args)]
pub struct VmArgs {
    /// Kernel series: 5.10, 6.1, 6.12 or all (repeat or separate with commas for several).
    #[arg(long = "kernel", required = true, value_delimiter = ',')]
    kernels: Vec<String>,
    /// Seconds one guest may run, boot included, before QEMU is killed.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
    /// Use KVM instead of TCG (needs a /dev/kvm that runs stock kernels: not kvm_pvm).
    #[arg(long)]
    kvm: bool,
    /// Guest memory (QEMU's -m).
    #[arg(long, default_value = "4G")]
    memory: String,
    /// Guest CPUs.
    #[arg(long, default_value_t = 2)]
    smp: u32,
    /// Show all of the kernel's boot messages.
    #[arg(long)]
    verbose: bool,
    /// Extra environment variable for the command, KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory in the guest (default: the workspace root).
    #[arg(long)]
    cwd: Option<PathBuf>,
    /// Run this integration test binary of the apptheus package (tracker, daemon, ...; several
    /// with commas or repeated: one after the other in one boot); the arguments after `--` go
    /// to each (a test name filter, --exact, ...).
    #[arg(
        long,
        value_name = "SUITE",
        value_delimiter = ',',
        conflicts_with = "check"
    )]
    test: Vec<String>,
    /// Check the guest's facts: kernel, pure cgroup v2 with cpu io memory pids, tracefs, bpffs,
    /// BTF, the overlay root.
    #[arg(long)]
    check: bool,
    /// The command to run in the guest, with its arguments (after `--` if it has flags).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// `cargo xtask vm`: the exit code to leave with.
pub fn main(args: VmArgs) -> Result<i32> {
    if !crate::is_root() {
        bail!(
            "cargo xtask vm runs QEMU with the host's / as the guest's root file system: run it as root"
        );
    }
    let mut kernels = Vec::new();
    for k in &args.kernels {
        for k in Kernel::parse(k)? {
            if !kernels.contains(&k) {
                kernels.push(k);
            }
        }
    }
    crate::setup::vm_deps(false)?;
    let mut extra = Vec::new();
    for kv in &args.env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--env {kv:?}: expected KEY=VALUE"))?;
        extra.push((k.to_string(), v.to_string()));
    }
    let testing = !args.test.is_empty();
    if testing && !extra.iter().any(|(k, _)| k == "RUST_BACKTRACE") {
        extra.push(("RUST_BACKTRACE".to_string(), "1".to_string()));
    }
    let env = guest_env(&extra);
    let cmd = if testing {
        crate::setup::build_deps()?;
        let exes = suite::build(&args.test)?;
        suite::command(&exes, &args.args)
    } else if args.check {
        if !args.args.is_empty() {
            bail!("--check runs its own script: no command");
        }
        Vec::new() // per kernel, below
    } else {
        if args.args.is_empty() {
            bail!("no command: cargo xtask vm --kernel K -- CMD [ARGS...]");
        }
        args.args.clone()
    };
    let opts = Options {
        kvm: args.kvm,
        memory: args.memory.clone(),
        smp: args.smp,
        verbose: args.verbose,
        echo: true,
    };
    let cwd = args.cwd.clone().unwrap_or_else(crate::workspace_root);
    let timeout = Duration::from_secs(args.timeout);
    let mut rows = Vec::new();
    for kernel in &kernels {
        let cmd = if args.check {
            let k = kernels::require(*kernel)?;
            suite::self_check_script(&k.release, &crate::workspace_root())
        } else {
            cmd.clone()
        };
        println!(
            "xtask vm: booting {} ({})",
            kernel.series(),
            kernels::require(*kernel)?.package
        );
        let outcome = qemu::run(*kernel, &cmd, &env, &cwd, timeout, &opts)?;
        let log = std::fs::read_to_string(&outcome.log).unwrap_or_default();
        let verdicts: Vec<(String, suite::Verdict)> = suite::split_log(&log, &args.test)
            .into_iter()
            .map(|(name, part)| (name, suite::Verdict::parse(part)))
            .collect();
        rows.push((outcome, verdicts));
    }
    println!();
    let mut code = 0;
    for (o, verdicts) in &rows {
        let secs = |d: Option<Duration>| {
            d.map_or("-".to_string(), |d| format!("{:.1} s", d.as_secs_f64()))
        };
        let status = match o.status {
            Some(s) => s.to_string(),
            None if o.timed_out => "timed out".to_string(),
            None => "none".to_string(),
        };
        println!(
            "xtask vm: {:<5} {:<24} boot to init {:>7}, command {:>8}, total {:>8}, status {status}; log {}",
            o.kernel.series(),
            o.release,
            secs(o.boot_to_init),
            secs(o.command_time),
            secs(Some(o.total)),
            o.log.display()
        );
        for (name, v) in verdicts {
            println!(
                "          {name}: {}",
                v.result.as_deref().unwrap_or("no test result")
            );
            for failed in &v.failed {
                println!("            FAILED {failed}: {}", v.message(failed));
            }
        }
        let c = match o.status {
            Some(s) => s,
            None => {
                if rows.len() == 1 {
                    o.status()?;
                }
                1
            }
        };
        if code == 0 {
            code = c;
        }
    }
    Ok(code)
}
