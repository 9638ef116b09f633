//! `cargo xtask`: the developer commands of apptheus. Every command that builds first runs
//! `setup`, which installs what the build needs on a fresh machine and does nothing (fast) when
//! everything is present.
mod bench;
mod fuzz;
// The check that apptheus's module graph has no cycle: a test of this crate.
#[cfg(test)]
mod modgraph;
mod package;
mod setup;
mod tally;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "apptheus developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the build's needs: nightly's rust-src and bpf-linker; with --test or --bench,
    /// also what the tests or the bench use.
    Setup {
        /// Also install what the test suite uses: Debian packages, the VM test bed (QEMU, the
        /// matrix's kernels) and the packagers (--help lists them all).
        // The long help is made from setup.rs's tables, so that it names every package.
        #[arg(long, long_help = setup::test_help())]
        test: bool,
        /// Also install the Debian packages the bench and the soak use (--help lists them).
        #[arg(long, long_help = setup::bench_help())]
        bench: bool,
        /// Fetch the newest kernels of the VM matrix (5.10, 6.1, 6.12) again, even if cached;
        /// installs the VM test bed's packages where missing too.
        #[arg(long)]
        refresh_kernels: bool,
    },
    /// Build the daemon (with its embedded eBPF object), apptheus-exec, apptheus-top and
    /// apptheus-report.
    Build {
        /// The release profile (target/release) instead of the debug one.
        #[arg(long)]
        release: bool,
    },
    /// Build, then run the daemon as root (through sudo when needed; ^C stops it). With no
    /// daemon flags it trusts a root-owned copy of this workspace's apptheus-exec
    /// (/run/apptheus/bin/apptheus-exec) and Apptainer's starters where installed.
    Run {
        /// Build and run the release profile (target/release) instead of the debug one.
        #[arg(long)]
        release: bool,
        /// Flags for the daemon, after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Install what `setup --test` does, then format check, clippy, the whole test suite on the
    /// real kernel, then the kernel matrix: the kernel-dependent suites in QEMU guests booting
    /// 5.10, 6.1 and 6.12 on pure cgroup v2 (needs root).
    Test {
        /// Skip the kernel matrix (for a quick run while developing; CI runs it).
        #[arg(long)]
        no_vm: bool,
        /// Extra arguments for the test binaries, the host's (`cargo test -- ARGS`) and the
        /// guests' (e.g. a test name filter), after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Fuzz the parsers of outside input (cargo-fuzz, nightly), each target for a bounded time;
    /// fails on a crash and says how to reproduce it. Not part of `test`.
    Fuzz {
        /// Seconds of fuzzing per target.
        #[arg(long, default_value_t = 60)]
        time: u64,
        /// Targets to run (default: all of fuzz/Cargo.toml).
        targets: Vec<String>,
    },
    /// Build the .deb and the .rpm (target/debian/, target/generate-rpm/) from a release build
    /// without debug info (cargo profile `dist`, binaries in target/dist/).
    Package(package::PackageArgs),
    /// Run a command (or `--test SUITE`, an integration test binary) as root in a QEMU guest
    /// booting Debian's 5.10, 6.1 or 6.12 kernel on pure cgroup v2, the host's / shared
    /// read-only under a tmpfs overlay; exits with the command's status.
    Vm(vm::VmArgs),
    /// Measure the daemon side by side with Pushgateway, with C floors and with bpftrace (as
    /// root); writes docs/benchmarks.md, benchmarks.json, benchmarks-curve.png and the README
    /// summary (target/bench-quick, without the README, with --quick or --curve-only). Not
    /// part of `test`.
    Bench(bench::BenchArgs),
    /// Soak: 100,000 short containers (exits, failures, signals, OOM kills, fork bursts), 200
    /// alive at once, through one daemon scraped by a real Prometheus; checks that nothing
    /// grows and nothing is lost, writes its section of docs/benchmarks.md and docs/soak.png
    /// (as root; the churn up to 30 minutes; Prometheus from `setup --test`). Not part of
    /// `test` (tests/soak.rs is its short version).
    Soak(bench::soak::SoakArgs),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Setup {
            test,
            bench,
            refresh_kernels,
        } => {
            setup::build_deps()?;
            if test {
                setup::test_deps()?;
                setup::package_deps()?;
            }
            if refresh_kernels {
                setup::vm_deps(true)?;
            }
            if bench {
                setup::bench_deps()?;
            }
            Ok(())
        }
        Cmd::Build { release } => {
            setup::build_deps()?;
            build(release)
        }
        Cmd::Run { release, args } => {
            setup::build_deps()?;
            build(release)?;
            run(release, args)
        }
        Cmd::Test { no_vm, args } => {
            setup::build_deps()?;
            setup::test_deps()?;
            setup::package_deps()?;
            test(args, !no_vm)
        }
        Cmd::Fuzz { time, targets } => {
            setup::build_deps()?;
            setup::fuzz_deps()?;
            fuzz::fuzz(time, targets)
        }
        Cmd::Package(args) => {
            setup::build_deps()?;
            setup::package_deps()?;
            package::run(args)
        }
        Cmd::Bench(args) => bench::run(args),
        Cmd::Soak(args) => bench::soak::run(args),
        Cmd::Vm(args) => {
            let code = vm::main(args)?;
            std::process::exit(code)
        }
    }
}

fn workspace_root() -> PathBuf {
    // xtask lives in the workspace's top directory.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from(".."), Path::to_path_buf)
}

/// A `cargo` command at the workspace root, with ~/.cargo/bin (bpf-linker) on PATH.
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd.env("PATH", setup::path_with_cargo_bin());
    cmd
}

fn status(cmd: &mut Command) -> Result<()> {
    let st = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

/// The daemon's test hooks (`apptheus::testhook`): on in every build the integration tests
/// run, here and in the kernel matrix's guests; never in `build`, `run`, `package` or `bench`.
const TEST_FEATURES: &str = "apptheus/test-hooks";

/// `cargo build` of every shipped binary: the daemon and apptheus-exec (package apptheus),
/// apptheus-top and apptheus-report (package apptheus-client).
const CLIENT_AND_DAEMON: [&str; 6] = [
    "build",
    "--package",
    "apptheus",
    "--package",
    "apptheus-client",
    "--bins",
];

fn build(release: bool) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(CLIENT_AND_DAEMON);
    if release {
        cmd.arg("--release");
    }
    status(&mut cmd)
}

fn target_dir(release: bool) -> PathBuf {
    workspace_root()
        .join("target")
        .join(if release { "release" } else { "debug" })
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn run(release: bool, mut args: Vec<String>) -> Result<()> {
    let dir = target_dir(release);
    let daemon = dir.join("apptheus");
    let sudo = |program: &str| {
        if is_root() {
            Command::new(program)
        } else {
            let mut c = Command::new("sudo");
            c.arg(program);
            c
        }
    };
    if args.is_empty() {
        // The daemon trusts only root-owned launchers that no one else can replace; a build tree
        // may belong to a user, so trust a root-owned copy.
        let exec = Path::new("/run/apptheus/bin/apptheus-exec");
        status(
            sudo("install")
                .args(["-D", "-o", "root", "-g", "root", "-m", "0755"])
                .arg(dir.join("apptheus-exec"))
                .arg(exec),
        )?;
        let mut trusted = vec![exec.display().to_string()];
        for prefix in [
            "/usr/libexec/apptainer/bin",
            "/usr/local/libexec/apptainer/bin",
        ] {
            for starter in ["starter", "starter-suid"] {
                let p = Path::new(prefix).join(starter);
                if p.exists() {
                    trusted.push(p.display().to_string());
                }
            }
        }
        args.push(format!("--trust.path={}", trusted.join(";")));
        println!("apptheus: trusting {}", trusted.join(";"));
        println!(
            "apptheus: try it from another shell:\n    {} -- sh -c 'yes > /dev/null & sleep 5; kill $!'\n  then: curl -s localhost:9091/metrics | grep apptheus_container_",
            exec.display()
        );
    }
    if !is_root() {
        println!("apptheus needs root: running it through sudo");
    }
    run_until_interrupted(sudo(&daemon.to_string_lossy()).args(&args))
}

/// Run the daemon until it exits; ^C (or SIGTERM, SIGHUP) here stops it with SIGTERM. The
/// daemon leaves this terminal at start (a root daemon must not take a terminal's signals), so
/// the terminal's ^C reaches only this process, which passes it on as root's kill.
fn run_until_interrupted(cmd: &mut Command) -> Result<()> {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, pthread_sigmask};
    let mut stop = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        stop.add(s);
    }
    // Blocked here and in the thread below (the daemon starts with none blocked: std resets
    // the mask in the child), taken by sigwait.
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&stop), None)?;
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    std::thread::spawn(move || {
        if stop.wait().is_ok() {
            let _ = kill(pid, Signal::SIGTERM);
        }
    });
    let st = child.wait()?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

fn test(args: Vec<String>, vm: bool) -> Result<()> {
    if !is_root() {
        bail!(
            "the test suite loads eBPF programs, creates cgroups and moves processes: run `cargo xtask test` as root"
        );
    }
    let start = std::time::Instant::now();
    status(cargo().args(["fmt", "--all", "--", "--check"]))
        .context("code is not formatted: run `cargo fmt --all`")?;
    status(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // Build the binaries the integration tests start (with the test hooks, as `cargo test`
    // below builds them), and those tests/package.rs packs (it runs `xtask package --no-build`
    // itself, twice, for an install and an upgrade; the package's build checks that its daemon
    // holds no test hook).
    status(
        cargo()
            .args(CLIENT_AND_DAEMON)
            .args(["--features", TEST_FEATURES]),
    )?;
    let packaged = std::time::Instant::now();
    package::build()?;
    println!(
        "xtask test: package binaries built in {:.0} s",
        packaged.elapsed().as_secs_f64()
    );
    let host_start = std::time::Instant::now();
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--no-fail-fast",
        "--workspace",
        "--exclude",
        "apptheus-ebpf",
        "--features",
        TEST_FEATURES,
    ]);
    if !args.is_empty() {
        cmd.arg("--").args(&args);
    }
    let (host, host_ok) = run_counting(&mut cmd)?;
    let host_time = host_start.elapsed();
    println!("xtask test: host {host} in {}", tally::minutes(host_time));
    let vm_start = std::time::Instant::now();
    let runs = if vm {
        vm::matrix::run(&args)?
    } else {
        println!("xtask test: --no-vm: the kernel matrix (5.10, 6.1, 6.12) was not run");
        Vec::new()
    };
    let vm_time = vm_start.elapsed();
    let mut total = host;
    println!();
    println!("xtask test: host {host} in {}", tally::minutes(host_time));
    for run in &runs {
        total += run.tally();
        for line in run.summary() {
            println!("{line}");
        }
    }
    println!(
        "xtask test: {total} in {} (lints and builds {}, host {}, VMs {})",
        tally::minutes(start.elapsed()),
        tally::minutes(host_start.duration_since(start)),
        tally::minutes(host_time),
        tally::minutes(vm_time)
    );
    if !host_ok {
        bail!("the host's test suite failed");
    }
    let failed: Vec<&str> = runs
        .iter()
        .filter(|r| !r.ok())
        .map(|r| r.kernel.series())
        .collect();
    if !failed.is_empty() {
        bail!("the tests failed in the {} guest(s)", failed.join(", "));
    }
    Ok(())
}

/// Run `cargo test`, passing its output through; the tests' counts over all its test binaries,
/// and whether it succeeded.
fn run_counting(cmd: &mut Command) -> Result<(tally::Tally, bool)> {
    use std::io::{BufRead as _, BufReader};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let mut tally = tally::Tally::default();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                tally += tally::Tally::of_result(rest);
            }
        }
    }
    let st = child.wait()?;
    Ok((tally, st.success()))
}
