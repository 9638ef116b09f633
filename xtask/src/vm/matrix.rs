//! The kernel matrix of `cargo xtask test`: after the host's suites, the suites that depend on
//! the kernel or on pure cgroup v2 run in guests booting Debian's 5.10, 6.1 and 6.12 kernels
//! (one boot per kernel, one suite after the other, `--test-threads=1`). A guest's failed
//! tests, with their panic messages, are listed in the summary and fail the run; so do a guest
//! that reports no status (a timeout, a crash) and a suite that prints no `test result:` line.
//!
//! Which suites run where ([`MATRIX`]), and why. A guest is TCG-emulated (fork+exec ~40x slower
//! than the host): every suite in one guest took 9 min 42 s (6.1, at load 8-10 on 2 cores), so
//! all of them on every kernel would take ~30 min, more than the ~25 the whole `cargo xtask test`
//! may take there:
//! - `tracker`, `daemon`, `field`, `ends` on all three: the eBPF programs against each kernel's
//!   tracepoints and BTF (`ends`: the exit code read at a BTF offset, OOM kills, the cgroup_skb
//!   network counters), the daemon end to end, and the field placements with their
//!   measurements (5.10 has no `memory.peak`, 5.19+ has: its peaks are sampled, 6.1's and 6.12's
//!   are the kernel's);
//! - `slurm` on 5.10 (the stand-in for RHEL 9's 5.14) and 6.1 (Debian 12's own kernel with
//!   Debian 12's Slurm 22.05, its cgroup/v2 plugin);
//! - `restart`, `security`, `hostile`, `telemetry`, `prometheus` on 6.1 only: 6.1 has no
//!   `SO_PEERPIDFD`, so `security` and `hostile` there cover the `pidfd_open` fallback (5.10
//!   takes the same path) while the host (6.18) covers `SO_PEERPIDFD`; recovery, PSI, memory
//!   events and the Prometheus side read the same v2 files on every kernel;
//! - `fresh_host` on 5.10 and 6.1: the daemon started where tracefs is not mounted mounts it;
//! - `exec` on 6.1: apptheus-exec's connect-first start and its wait for `end` on pure v2 (CMD
//!   in the container's cgroup from its first instruction, its pages charged there);
//! - `query` on 6.1: the query socket's callers named by the kernel (SO_PEERCRED and
//!   SO_PEERGROUPS, 4.13+) with real users and groups, on a pure v2 guest;
//! - `report` on 6.1: the report's figures from v2's files (cpu.stat, memory.peak, cpu.max).
use std::time::{Duration, Instant};

use anyhow::Result;

use super::{Kernel, Outcome, guest_env, suite};
use crate::tally::{Tally, minutes};

/// The suites each kernel runs (see the module's documentation for why).
pub const MATRIX: &[(Kernel, &[&str])] = &[
    (
        Kernel::V5_10,
        &["tracker", "daemon", "field", "ends", "slurm", "fresh_host"],
    ),
    (
        Kernel::V6_1,
        &[
            "tracker",
            "daemon",
            "field",
            "ends",
            "restart",
            "security",
            "hostile",
            "telemetry",
            "prometheus",
            "slurm",
            "fresh_host",
            "exec",
            "query",
            "report",
        ],
    ),
    (Kernel::V6_12, &["tracker", "daemon", "field", "ends"]),
];

/// One guest may run this long, boot included, before QEMU is killed.
const GUEST_TIMEOUT: Duration = Duration::from_secs(1800);

/// What one kernel's guest gave.
pub struct KernelRun {
    pub kernel: Kernel,
    /// None when the guest could not be started (the error says why).
    pub outcome: Option<Outcome>,
    pub error: Option<String>,
    pub suites: Vec<(String, suite::Verdict)>,
    pub elapsed: Duration,
}

impl KernelRun {
    /// Its tests passed and failed; a suite without a verdict and a guest without a status
    /// count as one failure each.
    pub fn tally(&self) -> Tally {
        let mut t = Tally::default();
        for (_, v) in &self.suites {
            match &v.result {
                Some(r) => t += Tally::of_result(r),
                None => t.failed += 1,
            }
        }
        if self.outcome.as_ref().is_none_or(|o| o.status.is_none()) {
            t.failed += 1;
        }
        t
    }

    /// Whether everything passed: a status of 0 and no failed test.
    pub fn ok(&self) -> bool {
        self.outcome.as_ref().and_then(|o| o.status) == Some(0) && self.tally().failed == 0
    }

    /// Its summary: one line of counts, then a line per problem.
    pub fn summary(&self) -> Vec<String> {
        let boot = self
            .outcome
            .as_ref()
            .and_then(|o| o.boot_to_init)
            .map_or("-".to_string(), |d| format!("{:.1} s", d.as_secs_f64()));
        let per_suite: Vec<String> = self
            .suites
            .iter()
            .map(|(name, v)| {
                let t = v.result.as_deref().map(Tally::of_result);
                match t {
                    Some(t) => format!("{name} {}/{}", t.passed, t.failed),
                    None => format!("{name} no result"),
                }
            })
            .collect();
        let mut lines = vec![format!(
            "xtask test: VM {:<4} {} in {} (boot {boot}; passed/failed: {})",
            self.kernel.series(),
            self.tally(),
            minutes(self.elapsed),
            per_suite.join(", ")
        )];
        if let Some(e) = &self.error {
            lines.push(format!("    FAILED to run the guest: {e}"));
        }
        if let Some(o) = &self.outcome {
            if o.status.is_none() {
                let why = if o.timed_out {
                    "timed out"
                } else {
                    "reported no status"
                };
                lines.push(format!(
                    "    FAILED: the guest {why}; console log {}",
                    o.log.display()
                ));
            }
            for (name, v) in &self.suites {
                if v.result.is_none() {
                    lines.push(format!(
                        "    FAILED {name}: no test result (see {})",
                        o.log.display()
                    ));
                }
                for failed in &v.failed {
                    let msg = v.message(failed);
                    lines.push(format!("    FAILED {name}::{failed}: {msg}"));
                }
            }
        }
        lines
    }
}

/// Build the suites of the matrix once, then boot each kernel and run its suites, with `args`
/// (a test name filter, ...) for each test binary. Every kernel runs even if one fails.
pub fn run(args: &[String]) -> Result<Vec<KernelRun>> {
    let mut all: Vec<String> = Vec::new();
    for (_, suites) in MATRIX {
        for s in *suites {
            if !all.iter().any(|a| a == s) {
                all.push(s.to_string());
            }
        }
    }
    let exes = suite::build(&all)?;
    let mut extra = vec![("RUST_BACKTRACE".to_string(), "1".to_string())];
    if let Ok(v) = std::env::var("RUST_BACKTRACE") {
        extra[0].1 = v;
    }
    let env = guest_env(&extra);
    let mut runs = Vec::new();
    for (kernel, suites) in MATRIX {
        let chosen: Vec<(String, std::path::PathBuf)> = exes
            .iter()
            .filter(|(name, _)| suites.contains(&name.as_str()))
            .cloned()
            .collect();
        let names: Vec<String> = chosen.iter().map(|(n, _)| n.clone()).collect();
        println!(
            "xtask test: booting {} for {}",
            kernel.series(),
            names.join(", ")
        );
        let start = Instant::now();
        let cmd = suite::command(&chosen, args);
        let result = super::run(*kernel, &cmd, &env, GUEST_TIMEOUT);
        let mut run = KernelRun {
            kernel: *kernel,
            outcome: None,
            error: None,
            suites: Vec::new(),
            elapsed: Duration::ZERO,
        };
        match result {
            Ok(outcome) => {
                let log = std::fs::read_to_string(&outcome.log).unwrap_or_default();
                run.suites = suite::split_log(&log, &names)
                    .into_iter()
                    .map(|(name, part)| (name, suite::Verdict::parse(part)))
                    .collect();
                run.outcome = Some(outcome);
            }
            Err(e) => run.error = Some(format!("{e:#}")),
        }
        run.elapsed = start.elapsed();
        runs.push(run);
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_suite_of_the_matrix_exists_and_each_kernel_runs_the_core() {
        let tests = crate::workspace_root().join("apptheus/tests");
        for (kernel, suites) in MATRIX {
            for s in *suites {
                assert!(
                    tests.join(format!("{s}.rs")).is_file(),
                    "{}: no suite {s}",
                    kernel.series()
                );
            }
            for core in ["tracker", "daemon", "field", "ends"] {
                assert!(suites.contains(&core), "{} lacks {core}", kernel.series());
            }
        }
        assert_eq!(MATRIX.len(), Kernel::ALL.len());
        assert!(
            MATRIX.iter().any(|(_, s)| s.contains(&"slurm")),
            "real Slurm runs in at least one kernel"
        );
    }

    #[test]
    fn a_guest_without_a_verdict_fails() {
        let run = KernelRun {
            kernel: Kernel::V6_1,
            outcome: None,
            error: Some("no kernel".to_string()),
            suites: vec![(
                "daemon".to_string(),
                suite::Verdict::parse("test result: ok. 3 passed; 0 failed; 0 ignored\n"),
            )],
            elapsed: Duration::from_secs(1),
        };
        assert_eq!(
            run.tally(),
            Tally {
                passed: 3,
                failed: 1
            }
        );
        assert!(!run.ok());
        assert!(run.summary()[1].contains("FAILED to run the guest: no kernel"));
    }
}
