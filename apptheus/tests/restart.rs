//! Restarts: the daemon killed with SIGKILL mid-run and started again takes back its containers.
// Test code: a failed unwrap is a failed test, with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::{path::Path, time::Duration};

use common::{Daemon, Workload, descendants, eventually, find_dirs, sample};

fn label(w: &Workload) -> String {
    format!("container=\"apptheus-exec_{}\"", w.pid())
}

/// Directories of a container's cgroup, in every hierarchy.
fn container_dirs(w: &Workload) -> Vec<std::path::PathBuf> {
    find_dirs(
        Path::new("/sys/fs/cgroup"),
        &format!("apptheus-exec_{}", w.pid()),
    )
}

/// `n` containers whose workloads are ready and wait for a line.
fn waiting(d: &Daemon, n: usize) -> Vec<Workload> {
    let mut live: Vec<Workload> = (0..n)
        .map(|_| d.exec_workload(&["ready", "wait"]))
        .collect();
    for w in &mut live {
        w.ready();
    }
    live
}

/// Each container's value of `name`, when all have one.
fn values(metrics: &str, name: &str, ws: &[Workload]) -> Option<Vec<f64>> {
    ws.iter()
        .map(|w| sample(metrics, name, &label(w)))
        .collect()
}

#[test]
fn kill9_and_restart_readopts_live_containers_and_cleans_up_ended_ones() {
    let mut d = Daemon::start(&["--monitor.interval=100ms", "--container.retention=2s"]);
    // Ten containers that burn a little once inside, wait across the restart, then fork and
    // burn again.
    let mut live: Vec<Workload> = (0..10)
        .map(|_| {
            d.exec_workload(&[
                "ready", "wait", "burn:0.1", "ready", "wait", "forks:2", "burn:0.1", "ready",
                "wait",
            ])
        })
        .collect();
    // One that will end while the daemon is down.
    let mut gone = d.exec_workload(&["ready", "wait"]);
    for w in &mut live {
        w.ready();
    }
    gone.ready();
    let visible = eventually(Duration::from_secs(5), || {
        let m = d.metrics();
        let procs = values(&m, "apptheus_container_processes", &live)?;
        (procs.iter().all(|&p| p == 1.0) && m.contains(&label(&gone))).then_some(())
    });
    assert!(
        visible.is_some(),
        "11 containers not visible:\n{}",
        d.log_text()
    );
    for w in &mut live {
        w.go();
        w.ready();
    }
    let before = eventually(Duration::from_secs(10), || {
        let m = d.metrics();
        let cpu = values(&m, "apptheus_container_cpu_usage_seconds_total", &live)?;
        cpu.iter().all(|&c| c >= 0.09).then_some(m)
    })
    .unwrap_or_else(|| {
        // Where each container's processes are, to tell a process left outside from a
        // reading that missed its CPU.
        let wheres: Vec<String> = live
            .iter()
            .map(|w| {
                let mut pids = vec![w.pid()];
                pids.extend(descendants(w.pid()));
                let cgs: Vec<String> = pids
                    .iter()
                    .map(|p| {
                        let cg = std::fs::read_to_string(format!("/proc/{p}/cgroup"))
                            .unwrap_or_default();
                        format!("{p}: {}", cg.replace('\n', " "))
                    })
                    .collect();
                cgs.join("\n  ")
            })
            .collect();
        panic!(
            "CPU not attributed before the restart:\n{}\nprocesses:\n  {}\nlog:\n{}",
            d.metrics(),
            wheres.join("\n  "),
            d.log_text()
        )
    });
    let cpu_before = values(&before, "apptheus_container_cpu_usage_seconds_total", &live)
        .expect("cpu of every container");
    let start_before = values(&before, "apptheus_container_start_time_seconds", &live).unwrap();
    // The state file is written by the sampler: give it a pass after the last admission.
    std::thread::sleep(Duration::from_millis(300));

    d.kill9();
    gone.go();
    assert!(gone.wait().success());
    assert!(
        !container_dirs(&gone).is_empty(),
        "the ended container's cgroup outlives the killed daemon"
    );
    d.respawn();

    let after = eventually(Duration::from_secs(5), || {
        let m = d.metrics();
        let procs = values(&m, "apptheus_container_processes", &live)?;
        procs.iter().all(|&p| p == 1.0).then_some(m)
    })
    .unwrap_or_else(|| panic!("containers not re-adopted:\n{}", d.log_text()));
    let log = d.log_text();
    assert!(
        log.contains("readopted=10") && log.contains("ended_while_down=1"),
        "{log}"
    );
    let cpu_after = values(&after, "apptheus_container_cpu_usage_seconds_total", &live).unwrap();
    for (b, a) in cpu_before.iter().zip(&cpu_after) {
        assert!(
            a >= b && *b >= 0.09,
            "CPU went from {b} to {a} across the restart"
        );
    }
    // Labels and start times come back from the state file (to the microsecond: it stores
    // seconds as a float).
    let start_after = values(&after, "apptheus_container_start_time_seconds", &live).unwrap();
    for (b, a) in start_before.iter().zip(&start_after) {
        assert!((a - b).abs() < 1e-6, "start time {b} became {a}");
    }
    for w in &live {
        assert!(
            after
                .lines()
                .any(|l| l.starts_with("apptheus_container_info{")
                    && l.contains(&label(w))
                    && l.contains("user=\"root\"")
                    && l.contains(&format!("pid=\"{}\"", w.pid()))),
            "info of {} after the restart:\n{after}",
            label(w)
        );
    }
    // The one that ended while the daemon was down is reported as ended.
    assert!(sample(&after, "apptheus_container_end_time_seconds", &label(&gone)).is_some());
    assert!(
        sample(
            &after,
            "apptheus_container_end_time_seconds",
            &label(&live[0])
        )
        .is_none()
    );

    // The trees are still followed: forks after the restart are counted, CPU keeps growing.
    for w in &mut live {
        w.go();
        w.ready();
    }
    let grown = eventually(Duration::from_secs(5), || {
        let m = d.metrics();
        let forks = values(&m, "apptheus_container_forks_total", &live)?;
        let cpu = values(&m, "apptheus_container_cpu_usage_seconds_total", &live)?;
        (forks.iter().all(|&f| f == 2.0) && cpu.iter().zip(&cpu_after).all(|(c, a)| *c >= a + 0.08))
            .then_some(())
    });
    assert!(
        grown.is_some(),
        "forks/CPU after the restart not attributed:\n{}",
        d.metrics()
    );
    // Every process still sits in its container's cgroup.
    for w in &live {
        for pid in descendants(w.pid()).into_iter().chain([w.pid()]) {
            let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            assert!(
                cg.contains(&format!("/apptheus-exec_{}", w.pid())),
                "{pid}: {cg}"
            );
        }
    }

    // After the retention, the ended-while-down container's series and cgroup are gone.
    let cleaned = eventually(Duration::from_secs(6), || {
        (!d.metrics().contains(&label(&gone)) && container_dirs(&gone).is_empty()).then_some(())
    });
    assert!(
        cleaned.is_some(),
        "ended-while-down container not cleaned up: {:?}",
        container_dirs(&gone)
    );

    // The re-adopted containers end normally, on their last exit.
    for w in &mut live {
        w.go();
        assert!(w.wait().success());
    }
    let ended = eventually(Duration::from_secs(5), || {
        let m = d.metrics();
        values(&m, "apptheus_container_end_time_seconds", &live).map(|_| ())
    });
    assert!(ended.is_some(), "re-adopted containers did not end");
    // After their retention, every directory is gone, the shared `<parent>` ones the first
    // run made included.
    let all_gone = eventually(Duration::from_secs(6), || {
        d.cgroup_dirs().is_empty().then_some(())
    });
    assert!(all_gone.is_some(), "left behind: {:?}", d.cgroup_dirs());
}

#[test]
fn corrupt_state_file_is_set_aside_and_containers_are_still_found() {
    let mut d = Daemon::start(&["--monitor.interval=100ms"]);
    let mut live = waiting(&d, 3);
    let visible = eventually(Duration::from_secs(5), || {
        values(&d.metrics(), "apptheus_container_processes", &live)
            .filter(|p| p.iter().all(|&p| p == 1.0))
    });
    assert!(visible.is_some());
    std::thread::sleep(Duration::from_millis(300));
    d.kill9();
    let file = d.state_dir().join("containers.json");
    let full = std::fs::read(&file).expect("state file written");
    std::fs::write(&file, &full[..full.len() / 2]).unwrap();
    d.respawn();

    // Found from the cgroup tree alone; labels from the ids and the processes.
    let m = eventually(Duration::from_secs(5), || {
        let m = d.metrics();
        values(&m, "apptheus_container_processes", &live)
            .filter(|p| p.iter().all(|&p| p == 1.0))
            .map(|_| m)
    })
    .unwrap_or_else(|| panic!("containers not re-adopted:\n{}", d.log_text()));
    for w in &live {
        assert!(
            m.lines().any(|l| l.starts_with("apptheus_container_info{")
                && l.contains(&label(w))
                && l.contains("user=\"root\"")
                && l.contains("exe=\"apptheus-exec\"")),
            "{m}"
        );
    }
    assert!(d.log_text().contains("state file unusable: set aside"));
    let aside: Vec<_> = std::fs::read_dir(d.state_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "the corrupt file is kept aside for a look");
    for w in &mut live {
        w.go();
        assert!(w.wait().success());
    }
}

#[test]
fn a_second_daemon_on_the_same_state_dir_is_refused() {
    let d = Daemon::start(&[]);
    let out = std::process::Command::new(common::bin("apptheus"))
        .arg(format!(
            "--trust.path={}",
            common::bin("apptheus-exec").display()
        ))
        .arg(format!("--state.dir={}", d.state_dir().display()))
        .arg(format!(
            "--socket.path={}",
            d.dir.path().join("other.sock").display()
        ))
        // Port 0: no port picked in advance that another test could take first.
        .arg("--web.listen-address=127.0.0.1:0")
        .arg(format!(
            "--cgroup.parent={}",
            common::unique("apptheus-test")
        ))
        .output()
        .expect("run a second apptheus");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--state.dir") && err.contains("in use"),
        "{err}"
    );
}

#[test]
fn a_clean_restart_keeps_containers_too() {
    let mut d = Daemon::start(&["--monitor.interval=100ms"]);
    let mut live = waiting(&d, 2);
    let before = eventually(Duration::from_secs(5), || {
        values(&d.metrics(), "apptheus_container_start_time_seconds", &live)
    })
    .expect("both visible");
    assert!(d.stop().success());
    d.respawn();
    let after = eventually(Duration::from_secs(5), || {
        let m = d.metrics();
        values(&m, "apptheus_container_processes", &live)
            .filter(|p| p.iter().all(|&p| p == 1.0))
            .and_then(|_| values(&m, "apptheus_container_start_time_seconds", &live))
    })
    .unwrap_or_else(|| panic!("not re-adopted after SIGTERM:\n{}", d.log_text()));
    for (b, a) in before.iter().zip(&after) {
        assert!((a - b).abs() < 1e-6, "start time {b} became {a}");
    }
    for w in &mut live {
        w.go();
        assert!(w.wait().success());
    }
}
