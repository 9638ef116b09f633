//! `cargo xtask fuzz`: runs the cargo-fuzz targets of `fuzz/` for a bounded time each and sums
//! up what they did.
//!
//! Per target: the committed seeds (`fuzz/seeds/<t>/`) are copied into the working corpus
//! (`fuzz/corpus/<t>/`, ignored by git, kept between runs so that coverage accumulates), the
//! target runs `-max_total_time` seconds with its dictionary (`fuzz/dicts/<t>.dict`) if there is
//! one, and its libFuzzer output goes to `fuzz/logs/<t>.log`. Each run is appended to
//! `fuzz/logs/runs.tsv`, the record of fuzz time and executions per target over all runs.
use std::{
    collections::BTreeSet,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};

use crate::setup;

struct Outcome {
    target: String,
    seconds: f64,
    executions: Option<u64>,
    corpus: usize,
    crashes: Vec<PathBuf>,
}

pub fn fuzz(seconds: u64, wanted: Vec<String>) -> Result<()> {
    let root = crate::workspace_root();
    let dir = root.join("fuzz");
    let all = list_targets(&root)?;
    let targets = if wanted.is_empty() {
        all.clone()
    } else {
        for t in &wanted {
            if !all.contains(t) {
                bail!("no fuzz target {t:?}; the targets are: {}", all.join(" "));
            }
        }
        wanted
    };
    // Build every target first, so that the time limits below are fuzzing time only.
    let mut build = cargo_fuzz(&root);
    build.arg("build");
    if targets.len() == 1 {
        build.arg(&targets[0]);
    }
    crate::status(&mut build).context("building the fuzz targets")?;

    let logs = dir.join("logs");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let mut outcomes = Vec::new();
    for target in &targets {
        println!("fuzz: {target} for {seconds}s");
        let outcome = run_target(&root, target, seconds)?;
        record(&logs.join("runs.tsv"), &outcome)?;
        outcomes.push(outcome);
    }

    println!(
        "\n{:<20} {:>12} {:>8} {:>10} {:>7} {:>8}",
        "target", "executions", "seconds", "exec/s", "corpus", "crashes"
    );
    for o in &outcomes {
        let execs = o.executions.map_or("?".into(), |n| n.to_string());
        let rate = o.executions.map_or("?".into(), |n| {
            format!("{:.0}", n as f64 / o.seconds.max(1e-3))
        });
        println!(
            "{:<20} {execs:>12} {:>8.0} {rate:>10} {:>7} {:>8}",
            o.target,
            o.seconds,
            o.corpus,
            o.crashes.len()
        );
    }
    println!("(all runs so far, per target: fuzz/logs/runs.tsv)");
    let crashed: Vec<&Outcome> = outcomes.iter().filter(|o| !o.crashes.is_empty()).collect();
    if crashed.is_empty() {
        return Ok(());
    }
    for o in &crashed {
        for crash in &o.crashes {
            let shown = crash.strip_prefix(&root).unwrap_or(crash);
            println!(
                "\ncrash in {}: {}\n  reproduce: cargo +nightly fuzz run {} {}\n  log: fuzz/logs/{}.log\n  then fix the parser and add the input to its unit tests (and to fuzz/seeds/{})",
                o.target,
                shown.display(),
                o.target,
                shown.display(),
                o.target,
                o.target
            );
        }
    }
    bail!(
        "{} fuzz target(s) crashed: {}",
        crashed.len(),
        crashed
            .iter()
            .map(|o| o.target.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    )
}

/// `cargo +nightly fuzz` at the workspace root (cargo-fuzz finds `fuzz/` there). Plain `cargo`,
/// not `$CARGO`: only rustup's proxy understands `+nightly`.
fn cargo_fuzz(root: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args(["+nightly", "fuzz"]).current_dir(root);
    cmd.env("PATH", setup::path_with_cargo_bin());
    cmd
}

fn list_targets(root: &Path) -> Result<Vec<String>> {
    let out = cargo_fuzz(root)
        .arg("list")
        .output()
        .context("running cargo fuzz list")?;
    if !out.status.success() {
        bail!(
            "cargo fuzz list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

fn files_in(dir: &Path) -> BTreeSet<PathBuf> {
    fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn run_target(root: &Path, target: &str, seconds: u64) -> Result<Outcome> {
    let fuzz = root.join("fuzz");
    let corpus = fuzz.join("corpus").join(target);
    let seeds = fuzz.join("seeds").join(target);
    let artifacts = fuzz.join("artifacts").join(target);
    fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    fs::create_dir_all(&artifacts)?;
    for seed in files_in(&seeds) {
        let copy = corpus.join(seed.file_name().context("seed without a name")?);
        if !copy.exists() {
            fs::copy(&seed, &copy)
                .with_context(|| format!("copying {} to {}", seed.display(), copy.display()))?;
        }
    }
    let before = files_in(&artifacts);
    let log_path = fuzz.join("logs").join(format!("{target}.log"));
    let log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut cmd = cargo_fuzz(root);
    cmd.args(["run", target])
        .arg(&corpus)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg("-print_final_stats=1");
    let dict = fuzz.join("dicts").join(format!("{target}.dict"));
    if dict.exists() {
        cmd.arg(format!("-dict={}", dict.display()));
    }
    let started = Instant::now();
    let status = cmd
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let elapsed = started.elapsed().as_secs_f64();
    let text = fs::read_to_string(&log_path).unwrap_or_default();
    let crashes: Vec<PathBuf> = files_in(&artifacts).difference(&before).cloned().collect();
    if !status.success() && crashes.is_empty() {
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "fuzz target {target} failed ({status}) without a crash artifact; end of {}:\n{}",
            log_path.display(),
            tail.join("\n")
        );
    }
    Ok(Outcome {
        target: target.to_string(),
        // libFuzzer's own count of its time where it gives one (it excludes the start-up).
        seconds: done_seconds(&text).unwrap_or(elapsed),
        executions: stat(&text, "stat::number_of_executed_units:", "")
            .or_else(|| stat(&text, "Done ", " runs in ")),
        corpus: files_in(&corpus).len(),
        crashes,
    })
}

/// The number after `prefix` (and before `until`, if not empty) on the last line that has it.
fn stat(text: &str, prefix: &str, until: &str) -> Option<u64> {
    text.lines().rev().find_map(|line| {
        let rest = line.trim().strip_prefix(prefix)?.trim_start();
        let number = if until.is_empty() {
            rest
        } else {
            rest.split(until).next()?
        };
        number.trim().parse().ok()
    })
}

/// "Done 123 runs in 60 second(s)": the 60.
fn done_seconds(text: &str) -> Option<f64> {
    text.lines().rev().find_map(|line| {
        let rest = line.trim().strip_prefix("Done ")?;
        let (_, after) = rest.split_once(" runs in ")?;
        after.split_whitespace().next()?.parse().ok()
    })
}

/// Appends one run to the record: unix time, target, seconds, executions, crashes.
fn record(path: &Path, o: &Outcome) -> Result<()> {
    let new = !path.exists();
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    if new {
        writeln!(file, "unix_time\ttarget\tseconds\texecutions\tcrashes")?;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    writeln!(
        file,
        "{now}\t{}\t{:.0}\t{}\t{}",
        o.target,
        o.seconds,
        o.executions.unwrap_or(0),
        o.crashes.len()
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "#2097152\tpulse  cov: 143 ft: 540 corp: 93/2918b exec/s: 69905 rss: 450Mb\n\
        Done 4194304 runs in 61 second(s)\n\
        stat::number_of_executed_units: 4194304\n\
        stat::average_exec_per_sec:     68759\n";

    #[test]
    fn reads_libfuzzer_stats() {
        assert_eq!(
            stat(LOG, "stat::number_of_executed_units:", ""),
            Some(4194304)
        );
        assert_eq!(stat(LOG, "Done ", " runs in "), Some(4194304));
        assert_eq!(done_seconds(LOG), Some(61.0));
        assert_eq!(stat("", "Done ", " runs in "), None);
    }
}
