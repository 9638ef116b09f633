//! The eBPF tracker on the real kernel: process trees are followed exactly.
// Test code: a failed unwrap is a failed test, with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::{collections::HashSet, time::Duration};

use apptheus::{
    pidfd::{Pidfd, Process},
    tracker::{Limits, ProcessCounters, Tracker},
};
use apptheus_common::{Event, EventKind};
use common::{Workload, eventually, require_root};

const KEY: u64 = 0xA9_0001;

fn load() -> (Tracker, apptheus::tracker::EventStream) {
    load_with(Limits::default())
}

/// Register `pid`'s tree under `key`: the members' pids (root first).
fn register(t: &Tracker, pid: i32, key: u64) -> Result<Vec<i32>, apptheus::tracker::Error> {
    let fd = Pidfd::open(pid).unwrap().expect("the root is alive");
    let tracked = t.register(Process::new(pid, fd), key)?;
    assert!(tracked.complete, "the walk was cut short");
    Ok(tracked.members.iter().map(Process::pid).collect())
}

fn load_with(limits: Limits) -> (Tracker, apptheus::tracker::EventStream) {
    require_root();
    Tracker::load(limits).unwrap_or_else(|e| panic!("the eBPF tracker cannot load here: {e:#}"))
}

/// The process counts of `c` (forks, execs, exits, live, untracked), the rest left default.
fn counts(c: ProcessCounters) -> ProcessCounters {
    ProcessCounters {
        forks: c.forks,
        execs: c.execs,
        exits: c.exits,
        live: c.live,
        untracked: c.untracked,
        ..Default::default()
    }
}

/// Wait until the process counts of `key` equal `want`'s; return what they were last.
fn counters_become(t: &Tracker, key: u64, want: ProcessCounters) -> ProcessCounters {
    let mut last = None;
    eventually(Duration::from_secs(10), || {
        last = t.counters(key).unwrap().map(counts);
        (last == Some(counts(want))).then_some(())
    });
    last.unwrap_or_default()
}

/// Collect events until `n` of `kind` arrived (or 10 s passed).
async fn collect(
    events: &mut apptheus::tracker::EventStream,
    out: &mut Vec<Event>,
    kind: EventKind,
    n: usize,
) {
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while out.iter().filter(|e| e.kind() == Some(kind)).count() < n {
            events.next_batch(out).await.unwrap();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_processes_forked_after_registration() {
    let (t, mut events) = load();
    let mut w = Workload::spawn(&[
        "ready",
        "wait",
        "tree:3:2",
        "forks:5",
        "execs:4",
        "threads:3",
        "thread-forks:2",
        "ready",
        "wait",
        "release",
        "ready",
        "wait",
        "exit:0",
    ]);
    w.ready();
    let members = register(&t, w.pid(), KEY).unwrap();
    assert_eq!(members, vec![w.pid()]);
    w.go();
    w.ready();
    // 3 children + 6 grandchildren + 5 + 4 exec'ing children + 2 from a second thread; threads add nothing.
    let c = counters_become(
        &t,
        KEY,
        ProcessCounters {
            forks: 20,
            execs: 4,
            exits: 11,
            live: 10,
            ..Default::default()
        },
    );
    assert_eq!(
        c,
        ProcessCounters {
            forks: 20,
            execs: 4,
            exits: 11,
            live: 10,
            ..Default::default()
        }
    );
    let tracked = t.pids(KEY);
    assert_eq!(
        tracked.len(),
        10,
        "root and the 9 processes of the tree: {tracked:?}"
    );
    w.go();
    w.ready();
    let c = counters_become(
        &t,
        KEY,
        ProcessCounters {
            forks: 20,
            execs: 4,
            exits: 20,
            live: 1,
            ..Default::default()
        },
    );
    assert_eq!(c.live, 1, "{c:?}");
    w.go();
    assert!(w.wait().success());
    let c = counters_become(
        &t,
        KEY,
        ProcessCounters {
            forks: 20,
            execs: 4,
            exits: 21,
            live: 0,
            ..Default::default()
        },
    );
    assert_eq!(
        c,
        ProcessCounters {
            forks: 20,
            execs: 4,
            exits: 21,
            live: 0,
            ..Default::default()
        }
    );
    assert!(
        t.pids(KEY).is_empty(),
        "the map still holds {:?}",
        t.pids(KEY)
    );
    assert_eq!(t.key_of(w.pid()).unwrap(), None);

    let mut got = Vec::new();
    collect(&mut events, &mut got, EventKind::Exit, 21).await;
    let count = |k| {
        got.iter()
            .filter(|e| e.key == KEY && e.kind() == Some(k))
            .count()
    };
    assert_eq!(
        (
            count(EventKind::Fork),
            count(EventKind::Exec),
            count(EventKind::Exit)
        ),
        (20, 4, 21)
    );
    let exec = got
        .iter()
        .find(|e| e.kind() == Some(EventKind::Exec))
        .unwrap();
    assert!(
        exec.comm.starts_with(b"true"),
        "exec event comm {:?}",
        exec.comm
    );
    assert_eq!(t.lost_events().unwrap(), 0);
    t.unregister(KEY).unwrap();
    assert_eq!(t.counters(KEY).unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopts_processes_forked_before_registration() {
    let (t, _events) = load();
    let key = KEY + 1;
    let mut w = Workload::spawn(&["tree:2:3", "ready", "wait", "release", "ready", "wait"]);
    w.ready();
    let members: HashSet<i32> = register(&t, w.pid(), key).unwrap().into_iter().collect();
    assert_eq!(
        members.len(),
        9,
        "root, 2 children, 6 grandchildren: {members:?}"
    );
    let tracked: HashSet<i32> = t.pids(key).into_iter().collect();
    assert_eq!(tracked, members);
    assert_eq!(t.counters(key).unwrap().unwrap().live, 9);
    w.go();
    w.ready();
    let c = counters_become(
        &t,
        key,
        ProcessCounters {
            forks: 0,
            execs: 0,
            exits: 8,
            live: 1,
            ..Default::default()
        },
    );
    assert_eq!(
        c,
        ProcessCounters {
            forks: 0,
            execs: 0,
            exits: 8,
            live: 1,
            ..Default::default()
        }
    );
    w.go();
    w.wait();
    let c = counters_become(
        &t,
        key,
        ProcessCounters {
            forks: 0,
            execs: 0,
            exits: 9,
            live: 0,
            ..Default::default()
        },
    );
    assert_eq!(c.live, 0, "{c:?}");
    assert!(t.pids(key).is_empty());
    t.unregister(key).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_storm_is_counted_exactly_and_never_leaks() {
    let (t, mut events) = load();
    let key = KEY + 2;
    let mut tracked = Workload::spawn(&["ready", "wait", "storm:2", "wait"]);
    let mut other = Workload::spawn(&["ready", "wait", "storm:2", "wait"]);
    tracked.ready();
    other.ready();
    register(&t, tracked.pid(), key).unwrap();
    tracked.go();
    other.go();
    let start = std::time::Instant::now();
    let mut got = Vec::new();
    let reader = async {
        // Drain events while the storm runs, so the ring buffer never fills.
        loop {
            events.next_batch(&mut got).await.unwrap();
        }
    };
    let n: u64 = tokio::select! {
        _ = reader => unreachable!(),
        n = tokio::task::spawn_blocking(move || {
            let line = tracked.line();
            let n = line.strip_prefix("forks ").unwrap().parse().unwrap();
            (n, tracked)
        }) => {
            let (n, t2) = n.unwrap();
            tracked = t2;
            n
        }
    };
    let secs = start.elapsed().as_secs_f64();
    let other_n: u64 = other
        .line()
        .strip_prefix("forks ")
        .unwrap()
        .parse()
        .unwrap();
    println!(
        "fork storm: tracked side {n} forks ({:.0}/s), untracked side {other_n} forks",
        n as f64 / secs
    );
    let want = ProcessCounters {
        forks: n,
        execs: 0,
        exits: n,
        live: 1,
        ..Default::default()
    };
    let c = counters_become(&t, key, want);
    assert_eq!(c, want);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while got
            .iter()
            .filter(|e| e.kind() == Some(EventKind::Exit))
            .count()
            < n as usize
        {
            events.next_batch(&mut got).await.unwrap();
        }
    })
    .await;
    let lost = t.lost_events().unwrap();
    let forks: Vec<&Event> = got
        .iter()
        .filter(|e| e.kind() == Some(EventKind::Fork))
        .collect();
    assert_eq!(forks.len() as u64 + lost, n, "fork events + lost = forks");
    assert!(
        forks
            .iter()
            .all(|e| e.key == key && e.ppid == tracked.pid() as u32)
    );
    assert!(
        got.iter()
            .all(|e| e.ppid != other.pid() as u32 && e.pid != other.pid() as u32)
    );
    assert_eq!(t.key_of(other.pid()).unwrap(), None);
    tracked.go();
    other.go();
    tracked.wait();
    other.wait();
    t.unregister(key).unwrap();
}

/// A process whose main thread exits while another thread runs on (pthread_exit) is not gone:
/// it stays tracked, and so does what that thread forks; it is gone when its last thread exits.
/// Kernels before 6.18 do not say so in their exit tracepoint (no `group_dead`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_whose_main_thread_exited_stays_tracked() {
    let (t, _events) = load();
    let key = KEY + 6;
    let mut w = Workload::spawn(&["ready", "wait", "leader-exit", "sleeper", "ready", "wait"]);
    w.ready();
    register(&t, w.pid(), key).unwrap();
    w.go();
    let child: i32 = w.line().strip_prefix("sleeper ").unwrap().parse().unwrap();
    w.ready();
    common::leader_exited(w.pid());
    let both = ProcessCounters {
        forks: 1,
        live: 2,
        ..Default::default()
    };
    assert_eq!(
        counters_become(&t, key, both),
        both,
        "the process is counted gone, or its child untracked"
    );
    assert_eq!(t.key_of(w.pid()).unwrap(), Some(key));
    assert_eq!(t.key_of(child).unwrap(), Some(key));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let one = ProcessCounters {
        forks: 1,
        exits: 1,
        live: 1,
        ..Default::default()
    };
    assert_eq!(counters_become(&t, key, one), one);
    // The last thread ends the process.
    w.go();
    assert!(w.wait().success());
    let none = ProcessCounters {
        forks: 1,
        exits: 2,
        live: 0,
        ..Default::default()
    };
    assert_eq!(counters_become(&t, key, none), none);
    assert_eq!(t.key_of(w.pid()).unwrap(), None);
    t.unregister(key).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregister_forgets_live_processes() {
    let (t, _events) = load();
    let key = KEY + 3;
    let mut w = Workload::spawn(&["tree:2:0", "ready", "wait"]);
    w.ready();
    assert_eq!(register(&t, w.pid(), key).unwrap().len(), 3);
    assert!(
        register(&t, w.pid(), key + 100).is_err(),
        "a tracked pid cannot be registered twice"
    );
    t.unregister(key).unwrap();
    assert!(t.pids(key).is_empty());
    assert_eq!(t.key_of(w.pid()).unwrap(), None);
    assert_eq!(t.counters(key).unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_a_vanished_process_fails() {
    let (t, _events) = load();
    let mut w = Workload::spawn(&["exit:0"]);
    // Held before it is reaped (a zombie still has its pid), registered after.
    let fd = Pidfd::open(w.pid()).unwrap().expect("a zombie at least");
    w.wait();
    let err = t
        .register(Process::new(w.pid(), fd), KEY + 4)
        .unwrap_err()
        .to_string();
    assert!(err.contains("exited"), "{err}");
    assert_eq!(t.counters(KEY + 4).unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_at_its_process_bound_forks_untracked_children() {
    let (t, _events) = load_with(Limits {
        per_container: 50,
        ..Limits::default()
    });
    let key = KEY + 5;
    let mut bomb = Workload::spawn(&[
        "ready",
        "wait",
        "tree:200:0",
        "ready",
        "wait",
        "release",
        "ready",
        "wait",
    ]);
    bomb.ready();
    assert_eq!(register(&t, bomb.pid(), key).unwrap(), vec![bomb.pid()]);
    bomb.go();
    bomb.ready();
    // 200 children alive at once: the first 50 are tracked, the rest only counted.
    let want = ProcessCounters {
        forks: 50,
        live: 51,
        untracked: 150,
        ..Default::default()
    };
    assert_eq!(counters_become(&t, key, want), want);
    assert_eq!(t.pids(key).len(), 51, "the launcher and 50 children");

    // Another container, registered after the storm, is tracked and counts its forks.
    let other_key = key + 1;
    let mut other = Workload::spawn(&["ready", "wait", "forks:5", "ready", "wait"]);
    other.ready();
    register(&t, other.pid(), other_key).unwrap();
    other.go();
    other.ready();
    let want_other = ProcessCounters {
        forks: 5,
        exits: 5,
        live: 1,
        ..Default::default()
    };
    assert_eq!(counters_become(&t, other_key, want_other), want_other);
    // The sampler's batched read gives what one lookup per container gives.
    let all = t.all_counters().unwrap();
    for k in [key, other_key] {
        assert_eq!(all.get(&k).copied(), t.counters(k).unwrap(), "key {k}");
    }

    // The children end: only the tracked ones count as exits, and the bound frees up.
    bomb.go();
    bomb.ready();
    let want = ProcessCounters {
        forks: 50,
        exits: 50,
        live: 1,
        untracked: 150,
        ..Default::default()
    };
    assert_eq!(counters_become(&t, key, want), want);
    bomb.go();
    other.go();
    bomb.wait();
    other.wait();
    t.unregister(key).unwrap();
    t.unregister(other_key).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batched_read_gives_every_containers_counters() {
    // Room for 3 containers: the batched read then goes 3 entries at a time, so 3 containers
    // fill a chunk exactly and the read goes on past it.
    let (t, _events) = load_with(Limits {
        containers: 3,
        ..Limits::default()
    });
    let mut ws: Vec<Workload> = (0..3)
        .map(|_| Workload::spawn(&["ready", "wait", "forks:2", "ready", "wait"]))
        .collect();
    for (i, w) in ws.iter_mut().enumerate() {
        w.ready();
        register(&t, w.pid(), KEY + 10 + i as u64).unwrap();
    }
    let mut w4 = Workload::spawn(&["ready", "wait"]);
    w4.ready();
    assert!(
        register(&t, w4.pid(), KEY + 13).is_err(),
        "a fourth container finds the counters map full"
    );
    for w in &mut ws {
        w.go();
        w.ready();
    }
    for i in 0..3 {
        let want = ProcessCounters {
            forks: 2,
            exits: 2,
            live: 1,
            ..Default::default()
        };
        assert_eq!(counters_become(&t, KEY + 10 + i, want), want);
    }
    let all = t.all_counters().unwrap();
    assert_eq!(all.len(), 3, "{all:?}");
    for i in 0..3 {
        let key = KEY + 10 + i;
        assert_eq!(
            all.get(&key).copied(),
            t.counters(key).unwrap(),
            "key {key}"
        );
    }
    for w in &mut ws {
        w.go();
        w.wait();
    }
    w4.go();
    w4.wait();
    for i in 0..3 {
        t.unregister(KEY + 10 + i).unwrap();
    }
}

/// A fork event tells the time the child's cgroups were fixed at the latest: userspace takes a
/// child whose event is later than its parent's move for one that inherited the move. The
/// kernel fixes them (cgroup_post_fork) before the fork hook runs, and a preempted fork can run
/// it milliseconds later, after a move ended. Made certain here: a bpftrace program, attached
/// first, spins 4 ms in the tracepoint before ours, and says when it began (after the child's
/// cgroups were fixed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_event_is_no_later_than_the_childs_cgroups() {
    let mut w = Workload::spawn(&["ready", "wait", "forks:3", "ready", "wait"]);
    w.ready();
    let script = format!(
        "BEGIN {{ printf(\"ready\\n\"); }}
tracepoint:task:task_newtask /pid == {}/ {{ $i = 0; $s = nsecs;
  while ($i < 100000) {{ $i++; if (nsecs - $s > 4000000) {{ break; }} }}
  printf(\"spun from %lld\\n\", $s); }}",
        w.pid()
    );
    let mut spin = std::process::Command::new("bpftrace")
        .args(["-e", &script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("bpftrace (run `cargo xtask setup --test`): {e}"));
    let mut out = std::io::BufReader::new(spin.stdout.take().unwrap());
    let mut line = String::new();
    let mut next_line = |line: &mut String| {
        line.clear();
        std::io::BufRead::read_line(&mut out, line).unwrap();
        line.trim().to_string()
    };
    // "Attaching 2 probes...", then BEGIN's line.
    let started = (0..2).any(|_| next_line(&mut line) == "ready");
    assert!(started, "bpftrace did not start: {line}");
    // Ours attaches after bpftrace's, so it runs after the spin.
    let (t, mut events) = load();
    let key = KEY + 9;
    register(&t, w.pid(), key).unwrap();
    w.go();
    w.ready();
    let mut spun: Vec<u64> = (0..3)
        .map(|_| {
            next_line(&mut line)
                .strip_prefix("spun from ")
                .and_then(|s| s.parse().ok())
                .expect("bpftrace's line")
        })
        .collect();
    let _ = spin.kill();
    let _ = spin.wait();
    let mut got = Vec::new();
    collect(&mut events, &mut got, EventKind::Fork, 3).await;
    let mut forks: Vec<u64> = got
        .iter()
        .filter(|e| e.key == key && e.kind() == Some(EventKind::Fork))
        .map(|e| e.ts_ns)
        .collect();
    assert_eq!(forks.len(), 3, "{got:?}");
    forks.sort_unstable();
    spun.sort_unstable();
    for (fork, spin) in forks.iter().zip(&spun) {
        assert!(
            fork < spin,
            "a fork event at {fork} ns, after the spin that began at {spin} ns: it is the hook's \
             time, not the child's"
        );
    }
    t.unregister(key).unwrap();
    w.go();
    w.wait();
}

/// The pid a `sleeper`-like step printed (`"<what> <pid>"`).
fn printed_pid(w: &mut Workload, what: &str) -> i32 {
    let line = w.line();
    line.strip_prefix(&format!("{what} "))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("expected \"{what} <pid>\", got {line:?}"))
}

/// Whether this kernel has children files and the admissions here read them (the test hook
/// `APPTHEUS_TEST_ADMIT_BY_LISTING=1` makes them list /proc instead).
fn admits_by_children() -> bool {
    std::path::Path::new("/proc/thread-self/children").exists()
        && std::env::var("APPTHEUS_TEST_ADMIT_BY_LISTING").as_deref() != Ok("1")
}

/// Where the kernel has children files, an admission finds the tree through them, the child of
/// a thread other than the main one included, and lists no /proc; elsewhere it lists /proc.
#[cfg(feature = "test-hooks")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admission_lists_proc_only_where_the_kernel_has_no_children_files() {
    let (t, _events) = load();
    let key = KEY + 20;
    let mut w = Workload::spawn(&["tree:2:2", "thread-sleeper", "ready", "wait", "release"]);
    let sleeper = printed_pid(&mut w, "thread-sleeper");
    w.ready();
    let before = apptheus::tracker::proc_listings();
    let members: HashSet<i32> = register(&t, w.pid(), key).unwrap().into_iter().collect();
    let listings = apptheus::tracker::proc_listings() - before;
    assert_eq!(
        members.len(),
        8,
        "root, 2 children, 4 grandchildren, the thread's child: {members:?}"
    );
    assert!(members.contains(&sleeper), "the thread's child {sleeper}");
    assert_eq!(t.pids(key).into_iter().collect::<HashSet<_>>(), members);
    if admits_by_children() {
        assert_eq!(
            listings, 0,
            "the children files were there, /proc was listed"
        );
    } else {
        assert!(listings > 0, "no children files, and /proc was not listed");
    }
    t.unregister(key).unwrap();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sleeper),
        nix::sys::signal::Signal::SIGKILL,
    );
    w.go();
    w.wait();
}

/// The cost of admitting N containers (a launcher and its sleeping child each, all started
/// before): N registrations back to back, timed, for each N of `APPTHEUS_TEST_ADMISSION_N`
/// (commas; 100 by default). A measurement, not a check: run by hand, e.g. `cargo xtask vm
/// --kernel 6.12 --env APPTHEUS_TEST_ADMISSION_N=100,1000 --test tracker -- --ignored --exact
/// admission_cost --nocapture` (and `--env APPTHEUS_TEST_ADMIT_BY_LISTING=1` for the listing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement"]
async fn admission_cost() {
    let (t, _events) = load();
    let ns: Vec<usize> = std::env::var("APPTHEUS_TEST_ADMISSION_N")
        .unwrap_or_else(|_| "100".to_string())
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .expect("APPTHEUS_TEST_ADMISSION_N: numbers")
        })
        .collect();
    // Two pipes a launcher: past the usual 1024 descriptors at 1,000.
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let want = hard.max(65_536);
    setrlimit(Resource::RLIMIT_NOFILE, want, want).unwrap();
    let base = KEY + 0x1_0000;
    for n in ns {
        let mut launchers: Vec<(Workload, i32)> = (0..n)
            .map(|_| {
                let mut w = Workload::spawn(&["sleeper", "ready", "wait"]);
                let child = printed_pid(&mut w, "sleeper");
                w.ready();
                (w, child)
            })
            .collect();
        let start = std::time::Instant::now();
        // A walk cut short at its bound goes on, as the daemon's next passes would.
        let mut cut_short = 0;
        for (i, (w, _)) in launchers.iter().enumerate() {
            let key = base + i as u64;
            let fd = Pidfd::open(w.pid())
                .unwrap()
                .expect("the launcher is alive");
            let mut tracked = t.register(Process::new(w.pid(), fd), key).unwrap();
            while !tracked.complete {
                cut_short += 1;
                tracked = t.walk_again(key, std::time::Instant::now()).unwrap();
            }
        }
        let took = start.elapsed().as_secs_f64();
        for i in 0..n {
            let live = t.counters(base + i as u64).unwrap().map(|c| c.live);
            assert_eq!(live, Some(2), "the launcher and its child");
        }
        println!(
            "admission of {n} containers: {took:.3} s ({:.2} ms each, {cut_short} walks cut short, by {})",
            took * 1000.0 / n as f64,
            if admits_by_children() {
                "children files"
            } else {
                "listing /proc"
            }
        );
        for (i, (w, child)) in launchers.iter_mut().enumerate() {
            t.unregister(base + i as u64).unwrap();
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*child),
                nix::sys::signal::Signal::SIGKILL,
            );
            w.go();
            w.wait();
        }
    }
}
