//! Faults on the way out: the summary file and the state file on a filesystem that fills up
//! (a small tmpfs the test mounts and fills), the summary file rotated by logrotate (create and
//! copytruncate), and files a killed daemon left half-written. Monitoring goes on, failures are
//! counted and logged once, nothing is torn, and nothing is lost once space returns.
// Test code: a failed unwrap is a failed test, with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use common::{Daemon, eventually, sample};

/// A tmpfs of `size` mounted on a directory of its own; unmounted when dropped.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn new(size: &str) -> SmallFs {
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount a tmpfs at {}", dir.path().display());
        SmallFs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fill it up with a file of its own; returns that file.
    fn fill(&self) -> PathBuf {
        let filler = self.path().join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = [0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        // The last bytes a partial chunk could not take.
        while f.write_all(&[0u8]).is_ok() {}
        filler
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Run a container to its end (admitted first, then its command exits), and wait until the
/// daemon has logged its summary (its final values taken): returns the container's id.
fn one_container(d: &Daemon) -> String {
    let mut w = d.exec_workload(&["ready", "wait"]);
    w.ready();
    let id = format!("apptheus-exec_{}", w.pid());
    d.metrics_showing(&format!("container=\"{id}\""));
    w.go();
    assert!(w.wait().success());
    eventually(Duration::from_secs(20), || {
        d.log_text()
            .lines()
            .any(|l| {
                l.contains("msg=\"container summary\"") && l.contains(&format!("container={id} "))
            })
            .then_some(())
    })
    .unwrap_or_else(|| panic!("no summary of {id}:\n{}", d.log_text()));
    id
}

/// The summary file's records: every line whole JSON; their containers.
fn records(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("a torn or bad line {l:?}: {e}"));
            v["container"].as_str().unwrap().to_string()
        })
        .collect()
}

fn write_errors(d: &Daemon, file: &str) -> f64 {
    sample(
        &d.metrics(),
        "apptheus_write_errors_total",
        &format!("file=\"{file}\""),
    )
    .unwrap_or(0.0)
}

fn count(d: &Daemon, needle: &str) -> usize {
    d.log_text().lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn a_full_filesystem_delays_records_and_state_and_loses_nothing() {
    let fs = SmallFs::new("256k");
    let summary = fs.path().join("summary.jsonl");
    let state = fs.path().join("state");
    let d = Daemon::start(&[
        "--monitor.interval=100ms",
        &format!("--container.summary-file={}", summary.display()),
        &format!("--state.dir={}", state.display()),
    ]);
    let mut ids = vec![one_container(&d)];
    assert_eq!(records(&summary), ids);
    let filler = fs.fill();
    // Full: monitoring goes on, the records wait, each failure is counted, one warning each.
    // (The summary file's last page may still take a record or two.)
    let warned = "cannot write the container summary file;";
    while count(&d, warned) == 0 {
        assert!(ids.len() < 12, "the full filesystem took every record");
        ids.push(one_container(&d));
    }
    for _ in 0..2 {
        ids.push(one_container(&d));
    }
    eventually(Duration::from_secs(10), || {
        (write_errors(&d, "summary") >= 3.0 && write_errors(&d, "state") >= 1.0).then_some(())
    })
    .unwrap_or_else(|| panic!("failures not counted:\n{}", d.metrics()));
    let so_far = records(&summary);
    assert!(
        so_far.len() < ids.len() && ids.starts_with(&so_far),
        "records {so_far:?} of {ids:?}"
    );
    assert_eq!(count(&d, warned), 1, "{}", d.log_text());
    assert_eq!(
        count(&d, "cannot save the containers for a restart;"),
        1,
        "{}",
        d.log_text()
    );
    assert!(!state.join(".containers.json.tmp").exists());
    // Space again: the kept records are written, in order, before the next one.
    std::fs::remove_file(filler).unwrap();
    ids.push(one_container(&d));
    let written = eventually(Duration::from_secs(10), || {
        let r = records(&summary);
        (r.len() == ids.len()).then_some(r)
    })
    .unwrap_or_else(|| panic!("records {:?}, containers {ids:?}", records(&summary)));
    assert_eq!(written, ids);
    eventually(Duration::from_secs(10), || {
        (count(&d, "containers saved for a restart again") == 1).then_some(())
    })
    .unwrap_or_else(|| panic!("the state file was not saved again:\n{}", d.log_text()));
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("containers.json")).unwrap()).unwrap();
    assert_eq!(saved["version"], 1);
    assert!(
        d.log_text()
            .contains("container summary file written again")
    );
}

#[test]
fn files_a_killed_daemon_left_half_written_are_read_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("summary.jsonl");
    let mut d = Daemon::start(&[
        "--monitor.interval=100ms",
        &format!("--container.summary-file={}", summary.display()),
    ]);
    let first = one_container(&d);
    // Killed once the ended container is let go of (its cgroup removed): a daemon killed
    // before that finds it again at the restart and sums it up once more (docs/metrics.md,
    // Container summary), which is not what this test is about.
    eventually(Duration::from_secs(10), || {
        common::find_dirs(Path::new("/sys/fs/cgroup"), &first)
            .is_empty()
            .then_some(())
    })
    .unwrap_or_else(|| panic!("{first}'s cgroup was not removed:\n{}", d.log_text()));
    d.kill9();
    // As a kill in the middle of each write would leave them: half a record, half a state
    // file beside the whole one.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&summary)
        .unwrap()
        .write_all(b"{\"container\":\"torn")
        .unwrap();
    let whole = std::fs::read(d.state_dir().join("containers.json")).unwrap();
    std::fs::write(
        d.state_dir().join(".containers.json.tmp"),
        &whole[..whole.len() / 2],
    )
    .unwrap();
    d.respawn();
    assert!(
        !d.log_text().contains("state file unusable"),
        "{}",
        d.log_text()
    );
    let second = one_container(&d);
    let text = std::fs::read_to_string(&summary).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[1], "{\"container\":\"torn");
    for (line, id) in [(lines[0], &first), (lines[2], &second)] {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["container"], id.as_str());
    }
}

/// logrotate as sites run it, between records: the daemon writes the next record to the new
/// file (create: it notices the rename and reopens; copytruncate: it appends at the new end).
#[test]
fn the_summary_file_rotated_by_logrotate_loses_no_record() {
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("summary.jsonl");
    let d = Daemon::start(&[
        "--monitor.interval=100ms",
        &format!("--container.summary-file={}", summary.display()),
    ]);
    let mut ids = Vec::new();
    let mut kept: Vec<String> = Vec::new();
    for (i, mode) in ["create 0640 root root", "copytruncate"].iter().enumerate() {
        ids.push(one_container(&d));
        let conf = dir.path().join(format!("logrotate-{i}.conf"));
        std::fs::write(
            &conf,
            format!(
                "{} {{\n  rotate 5\n  {mode}\n  missingok\n  nocompress\n}}\n",
                summary.display()
            ),
        )
        .unwrap();
        let st = Command::new("/usr/sbin/logrotate")
            .arg("--force")
            .arg("--state")
            .arg(dir.path().join("logrotate.state"))
            .arg(&conf)
            .status()
            .unwrap();
        assert!(st.success(), "logrotate {mode}");
        ids.push(one_container(&d));
    }
    // Every rotated file and the current one: each record once, whole.
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("summary.jsonl")
        })
        .collect();
    files.sort();
    eventually(Duration::from_secs(10), || {
        kept = files.iter().flat_map(|f| records(f)).collect();
        (kept.len() >= ids.len()).then_some(())
    });
    kept.sort();
    ids.sort();
    assert_eq!(kept, ids, "files {files:?}");
}
