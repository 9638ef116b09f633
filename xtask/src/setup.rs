//! `cargo xtask setup`: install what building and testing apptheus needs, idempotently.
//!
//! Build needs (see README): the nightly toolchain's `rust-src` (eBPF crates build `core` from
//! source) and `bpf-linker`, built against nightly rustc's own libLLVM, which is the LLVM it must
//! match. Test needs (`TEST_PACKAGES`, which says what each is for): Debian's `prometheus`
//! (promtool, the server), `systemd` (systemd-analyze), `util-linux` (setpriv), `openssl` and
//! `curl` (the TLS tests), a real Slurm (`slurmctld`, `slurmd`, `slurm-client`, `munge`:
//! tests/slurm.rs runs a private cluster; `slurmdbd` and `mariadb-server` for its accounting in
//! tests/jobrecords.rs; `influxdb`, the seed's central store, for tests/influxdb.rs), `chromium`, `chromium-driver` and `tmux`
//! (tests/glance.rs: the page in a browser, apptheus-top in a terminal), `logrotate`,
//! `bpftrace`, and the VM test bed of `cargo xtask vm` (QEMU, busybox-static, kmod, xz-utils
//! and the kernels of the matrix in /var/cache/apptheus/vm, see xtask/src/vm). `setup --help`
//! lists them from the tables. Each step checks first, so a machine that has everything pays a
//! few milliseconds.
use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// `apt-get` arguments for an install on a shared machine: never remove a package to make room
/// (apt fails instead), and wait for other engineers' setups installing at the same time.
pub const APT_INSTALL: [&str; 7] = [
    "install",
    "-y",
    "-q",
    "--no-install-recommends",
    "--no-remove",
    "-o",
    "DPkg::Lock::Timeout=600",
];

/// The bpf-linker release the build is pinned to.
pub const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the test suite drives: binary that proves presence -> package.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("/usr/bin/promtool", "prometheus"),
    // tests/package.rs: `systemd-analyze verify` and `security --offline=true` (systemd 250+)
    // of the unit, and the installed daemon run confined as the unit confines it (setpriv).
    ("/usr/bin/systemd-analyze", "systemd"),
    ("/usr/bin/setpriv", "util-linux"),
    // tests/web.rs: certificates made at test time, a TLS client that can be held to TLS 1.2.
    ("/usr/bin/openssl", "openssl"),
    ("/usr/bin/curl", "curl"),
    // tests/slurm.rs: a private single-node Slurm cluster (tests/common/slurm.rs).
    ("/usr/sbin/slurmctld", "slurmctld"),
    ("/usr/sbin/slurmd", "slurmd"),
    ("/usr/bin/srun", "slurm-client"),
    ("/usr/sbin/munged", "munge"),
    // tests/jobrecords.rs: Slurm's accounting (slurmdbd on a MariaDB the test starts).
    ("/usr/sbin/slurmdbd", "slurmdbd"),
    ("/usr/sbin/mariadbd", "mariadb-server"),
    // tests/influxdb.rs: the seed's central store, InfluxDB 1.x fed by remote write.
    ("/usr/bin/influxd", "influxdb"),
    // tests/glance.rs: the containers page in a real headless Chromium (over chromedriver),
    // apptheus-top in a real terminal.
    ("/usr/bin/chromium", "chromium"),
    ("/usr/bin/chromedriver", "chromium-driver"),
    ("/usr/bin/tmux", "tmux"),
    // tests/faults.rs: the summary file rotated as sites rotate it.
    ("/usr/sbin/logrotate", "logrotate"),
    // tests/tracker.rs: a program that holds a fork in its tracepoint before ours.
    ("/usr/bin/bpftrace", "bpftrace"),
];

/// Daemons the test packages ship. Their packages may start them (a host with systemd, or
/// without a `policy-rc.d` that forbids it); the tests run their own instances, so whatever the
/// install started is stopped again, by pid.
const TEST_DAEMONS: &[&str] = &[
    "/usr/sbin/munged",
    "/usr/sbin/slurmctld",
    "/usr/sbin/slurmd",
    "/usr/sbin/slurmdbd",
    "/usr/sbin/mariadbd",
    "/usr/bin/influxd",
];

fn cargo_bin() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    home.join("bin")
}

/// PATH with cargo's bin directory first, where bpf-linker is installed.
pub fn path_with_cargo_bin() -> OsString {
    let mut paths = vec![cargo_bin()];
    if let Some(p) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(paths).unwrap_or_default()
}

/// Run a command to completion: its stdout, trimmed; an error with its stderr if it fails.
pub(crate) fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn nightly_sysroot() -> Result<PathBuf> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"])).context(
        "the nightly toolchain is needed to build eBPF (rustup toolchain install nightly)",
    )?;
    Ok(PathBuf::from(sysroot))
}

pub fn build_deps() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    ensure_rust_src(&sysroot)?;
    ensure_bpf_linker(&sysroot)
}

fn ensure_rust_src(sysroot: &Path) -> Result<()> {
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Ok(());
    }
    println!(
        "xtask setup: adding rust-src to the nightly toolchain (eBPF builds core from source)"
    );
    crate::status(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

fn ensure_bpf_linker(sysroot: &Path) -> Result<()> {
    let linker = cargo_bin().join("bpf-linker");
    if linker.exists()
        && output(Command::new(&linker).arg("--version"))
            .is_ok_and(|v| v.contains(BPF_LINKER_VERSION))
    {
        return Ok(());
    }
    let llvm_major = output(Command::new("rustc").args(["+nightly", "-vV"]))?
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next().map(str::to_owned))
        .context("nightly rustc does not report its LLVM version")?;
    let libdir = sysroot.join("lib");
    let libllvm = std::fs::read_dir(&libdir)
        .with_context(|| format!("reading {}", libdir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM") && n.contains(".so"))
        .with_context(|| format!("no libLLVM*.so in {}", libdir.display()))?;
    println!(
        "xtask setup: building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {llvm_major} ({libllvm}); this takes a minute or two, once"
    );
    let lib = libdir.display();
    crate::status(
        Command::new("cargo")
            .args(["+nightly", "install", "bpf-linker", "--locked", "--force"])
            .args(["--version", BPF_LINKER_VERSION, "--no-default-features"])
            .args(["--features", &format!("llvm-{llvm_major},no-llvm-linking")])
            .env(
                "RUSTFLAGS",
                format!(
                    "-C link-arg=-L{lib} -C link-arg=-l:{libllvm} -C link-arg=-Wl,-rpath,{lib}"
                ),
            ),
    )
}

/// Debian packages the bench drives (see xtask/src/bench): binary -> package.
const BENCH_PACKAGES: &[(&str, &str)] = &[
    ("/usr/bin/prometheus-pushgateway", "prometheus-pushgateway"),
    ("/usr/bin/wrk", "wrk"),
    ("/usr/bin/strace", "strace"),
    ("/usr/sbin/bpftool", "bpftool"),
    // The eBPF hook cost's reference: one map lookup per event, as bpftrace compiles it.
    ("/usr/bin/bpftrace", "bpftrace"),
    ("/usr/bin/gcc", "gcc"),
    ("/usr/bin/taskset", "util-linux"),
    // The scale curve's plots draw their text with this font (no fontconfig needed).
    (
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "fonts-dejavu-core",
    ),
    // The sampling pass's profile.
    ("/usr/bin/perf", "linux-perf"),
];

pub fn test_deps() -> Result<()> {
    if !TEST_PACKAGES.iter().all(|(bin, _)| Path::new(bin).exists()) {
        install_test_packages()?;
    }
    vm_deps(false)
}

/// The test packages; the Slurm and munge daemons their install may start are stopped again.
fn install_test_packages() -> Result<()> {
    let before = daemon_pids(TEST_DAEMONS);
    let systemd = std::fs::read_to_string("/proc/1/comm").is_ok_and(|c| c.trim() == "systemd");
    install(TEST_PACKAGES, "the tests")?;
    if systemd {
        // Under systemd the packages enable their units too: stop and disable only those whose
        // daemon was not running before (the administrator's own are left alone).
        for (exe, unit) in [
            ("/usr/sbin/munged", "munge.service"),
            ("/usr/sbin/slurmctld", "slurmctld.service"),
            ("/usr/sbin/slurmd", "slurmd.service"),
            ("/usr/sbin/slurmdbd", "slurmdbd.service"),
            ("/usr/sbin/mariadbd", "mariadb.service"),
            ("/usr/bin/influxd", "influxdb.service"),
        ] {
            if !before.iter().any(|(_, e)| *e == canonical(exe)) {
                let _ = output(Command::new("systemctl").args(["disable", "--now", unit]));
            }
        }
    }
    stop_new_daemons(&before, TEST_DAEMONS);
    Ok(())
}

/// Running processes whose executable is one of `exes`: (pid, exe). `/usr/sbin/slurmd` and
/// `slurmctld` are alternatives symlinks (to `slurmd-wlm`, ...): a process's exe is the target.
fn daemon_pids(exes: &[&str]) -> Vec<(i32, String)> {
    let exes: Vec<String> = exes.iter().map(|e| canonical(e)).collect();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
            let exe = exe.to_string_lossy().into_owned();
            exes.contains(&exe).then_some((pid, exe))
        })
        .collect()
}

fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

/// `path` with its symlinks resolved (as is, when it does not exist).
fn canonical(path: &str) -> String {
    std::fs::canonicalize(path)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| path.to_string())
}

/// SIGTERM every process running one of `exes` that is not in `before` (the install started
/// it); SIGKILL what is still there 5 s later.
fn stop_new_daemons(before: &[(i32, String)], exes: &[&str]) {
    let started: Vec<(i32, String)> = daemon_pids(exes)
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    if started.is_empty() {
        return;
    }
    for (pid, exe) in &started {
        println!("xtask setup: stopping {exe} (pid {pid}), which the install started");
        signal(*pid, nix::sys::signal::Signal::SIGTERM);
    }
    let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let alive = |p: &(i32, String)| daemon_pids(exes).contains(p);
    while started.iter().any(alive) && std::time::Instant::now() < end {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for p in started.iter().filter(|p| alive(p)) {
        signal(p.0, nix::sys::signal::Signal::SIGKILL);
    }
}

/// Debian packages of the VM test bed (`cargo xtask vm`): binary -> package.
/// QEMU itself: see `ensure_qemu`.
const VM_PACKAGES: &[(&str, &str)] = &[
    // the initramfs's and the guest init's shell and tools (static: the initramfs has no libc)
    (crate::vm::initramfs::BUSYBOX, "busybox-static"),
    // depmod: the kernel packages ship no modules.dep
    ("/sbin/depmod", "kmod"),
    // 6.12's modules are .ko.xz
    ("/usr/bin/xz", "xz-utils"),
];

/// QEMU and the initramfs's tools, then the kernels of the matrix (fetched once into
/// /var/cache/apptheus/vm; again with `refresh`).
pub fn vm_deps(refresh: bool) -> Result<()> {
    let mut missing = missing(VM_PACKAGES);
    // Debian's plain `busybox` package has a dynamic /bin/busybox, useless in an initramfs.
    let busybox = crate::vm::initramfs::BUSYBOX;
    if !missing.contains(&"busybox-static")
        && !std::fs::read(busybox).is_ok_and(|b| crate::vm::initramfs::is_static_elf(&b))
    {
        missing.push("busybox-static");
    }
    apt_install(&missing, "the VM test bed")?;
    ensure_qemu()?;
    crate::vm::kernels::ensure(refresh)
}

const QEMU: &str = "/usr/bin/qemu-system-x86_64";
/// The Debian package of `QEMU`.
const QEMU_PACKAGE: &str = "qemu-system-x86";

/// QEMU for x86. On Debian 12, from bookworm-backports (QEMU 10) through private apt lists:
/// machines of this kind carry `qemu-utils` 10 from there, which Breaks the
/// `qemu-system-common` 7.2 of bookworm itself, so installing bookworm's QEMU would remove it.
/// Elsewhere, the release's own package.
fn ensure_qemu() -> Result<()> {
    if Path::new(QEMU).exists() {
        return Ok(());
    }
    let bookworm = std::fs::read_to_string("/etc/os-release")
        .is_ok_and(|t| t.lines().any(|l| l.trim() == "VERSION_CODENAME=bookworm"));
    if !bookworm {
        return apt_install(&[QEMU_PACKAGE], "the VM test bed");
    }
    let dir = crate::vm::kernels::cache_dir().join("apt-host");
    println!(
        "xtask setup: installing {QEMU_PACKAGE} from bookworm-backports, through private apt lists in {}",
        dir.display()
    );
    let apt = crate::vm::apt::PrivateApt::bookworm_host(&dir)?;
    apt.update()?;
    apt.install_from("bookworm-backports", &[QEMU_PACKAGE])
}

/// The bench's packages. Installing Pushgateway enables and, under systemd, starts its service
/// on :9091; the bench runs its own instance, so a service that this install started is stopped
/// and disabled again (one the administrator had before is left alone).
pub fn bench_deps() -> Result<()> {
    let pushgateway_was_there = Path::new(BENCH_PACKAGES[0].0).exists();
    install(BENCH_PACKAGES, "the bench")?;
    let systemd = std::fs::read_to_string("/proc/1/comm").is_ok_and(|c| c.trim() == "systemd");
    if !pushgateway_was_there && systemd {
        println!("xtask setup: stopping the prometheus-pushgateway service the package started");
        crate::status(Command::new("systemctl").args([
            "disable",
            "--now",
            "prometheus-pushgateway.service",
        ]))?;
    }
    Ok(())
}

fn install(packages: &[(&str, &str)], what: &str) -> Result<()> {
    apt_install(&missing(packages), what)
}

/// The packages whose binary is not there.
fn missing<'a>(packages: &[(&str, &'a str)]) -> Vec<&'a str> {
    packages
        .iter()
        .filter(|(bin, _)| !Path::new(bin).exists())
        .map(|(_, pkg)| *pkg)
        .collect()
}

fn apt_install(missing: &[&str], what: &str) -> Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    println!(
        "xtask setup: installing Debian packages for {what}: {}",
        missing.join(" ")
    );
    crate::status(Command::new("apt-get").arg("update").arg("-q"))?;
    crate::status(
        Command::new("apt-get")
            .args(APT_INSTALL)
            .args(missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// The packagers `cargo xtask package` runs, pinned (both build with rustc 1.95): crate, version.
const PACKAGERS: &[(&str, &str)] = &[("cargo-deb", "3.8.0"), ("cargo-generate-rpm", "0.21.1")];

/// Debian packages that packaging and its test use: binary -> package. dpkg-shlibdeps computes
/// the .deb's Depends; rpm reads the .rpm back (`rpm -qlp`, `rpm -qp --scripts`).
const PACKAGE_PACKAGES: &[(&str, &str)] = &[
    ("/usr/bin/dpkg-shlibdeps", "dpkg-dev"),
    ("/usr/bin/rpm", "rpm"),
];

/// What `cargo xtask package` needs: the pinned packagers (a minute or two each, once) and the
/// Debian tools above.
pub fn package_deps() -> Result<()> {
    install(PACKAGE_PACKAGES, "packaging")?;
    // `cargo install --list` names every installed crate with its version ("cargo-deb v3.8.0:").
    let installed = output(Command::new("cargo").args(["install", "--list"]))?;
    for (krate, version) in PACKAGERS {
        let line = format!("{krate} v{version}:");
        if installed.lines().any(|l| l.trim() == line) && cargo_bin().join(krate).exists() {
            continue;
        }
        println!("xtask setup: installing {krate} {version} (a minute or two, once)");
        crate::status(Command::new("cargo").args([
            "install",
            krate,
            "--locked",
            "--version",
            version,
        ]))?;
    }
    Ok(())
}

/// What `cargo xtask fuzz` needs besides the build's needs: cargo-fuzz (the fuzz targets build
/// with nightly, which `build_deps` already requires).
pub fn fuzz_deps() -> Result<()> {
    let fuzz = cargo_bin().join("cargo-fuzz");
    if fuzz.exists() && output(Command::new(&fuzz).arg("--version")).is_ok() {
        return Ok(());
    }
    println!("xtask setup: installing cargo-fuzz (a minute or two, once)");
    crate::status(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
}

/// The packages of a table, comma-separated.
fn names(packages: &[(&str, &str)]) -> String {
    let mut names: Vec<&str> = Vec::new();
    for (_, pkg) in packages {
        if !names.contains(pkg) {
            names.push(pkg);
        }
    }
    names.join(", ")
}

/// `setup --test`'s long help, from the tables `test_deps` and `package_deps` install, so
/// that it names all of them.
pub fn test_help() -> String {
    let kernels: Vec<&str> = crate::vm::Kernel::ALL.iter().map(|k| k.series()).collect();
    let packagers: Vec<String> = PACKAGERS.iter().map(|(c, v)| format!("{c} {v}")).collect();
    format!(
        "Also install what the test suite uses. Debian packages for the tests: {}. For the kernel \
         matrix's VMs: {}, {QEMU_PACKAGE}, and Debian's {} kernels (fetched once into {}). For \
         packaging: {}, and the pinned packagers (cargo install) {}.",
        names(TEST_PACKAGES),
        names(VM_PACKAGES),
        kernels.join(", "),
        crate::vm::kernels::cache_dir().display(),
        names(PACKAGE_PACKAGES),
        packagers.join(", ")
    )
}

/// `setup --bench`'s long help, from the table `bench_deps` installs.
pub fn bench_help() -> String {
    format!(
        "Also install the Debian packages the bench uses (the soak uses them too, and prometheus \
         from --test): {}.",
        names(BENCH_PACKAGES)
    )
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    /// The words of `setup`'s long help for `flag`, as `cargo xtask setup --help` shows it.
    fn words(flag: &str) -> Vec<String> {
        let cmd = crate::Cli::command();
        let setup = cmd.find_subcommand("setup").unwrap();
        let arg = setup.get_arguments().find(|a| a.get_id() == flag).unwrap();
        let help = arg.get_long_help().unwrap().to_string();
        // A package name is made of these: "rpm" is not a word of "cargo-generate-rpm".
        help.split(|c: char| !(c.is_ascii_alphanumeric() || "-+.".contains(c)))
            .map(|w| w.trim_end_matches('.').to_string())
            .collect()
    }

    #[test]
    fn setup_help_names_every_package() {
        let test = words("test");
        for (_, pkg) in TEST_PACKAGES
            .iter()
            .chain(VM_PACKAGES)
            .chain(PACKAGE_PACKAGES)
            .chain(&[("", QEMU_PACKAGE)])
        {
            assert!(test.iter().any(|w| w == pkg), "--test's help lacks {pkg}");
        }
        for (krate, version) in PACKAGERS {
            assert!(
                test.iter().any(|w| w == krate),
                "--test's help lacks {krate}"
            );
            assert!(
                test.iter().any(|w| w == version),
                "--test's help lacks {version}"
            );
        }
        let bench = words("bench");
        for (_, pkg) in BENCH_PACKAGES {
            assert!(bench.iter().any(|w| w == pkg), "--bench's help lacks {pkg}");
        }
    }
}
