//! A scriptable workload for apptheus's tests and benchmarks: real processes that fork, exec,
//! burn CPU and allocate memory in exactly the amounts a test asks for.
//!
//! `workload STEP...`, each step one argument, run in order:
//! - `ready`: print "ready <pid>" and flush (the test reads it).
//! - `wait`: block until a line arrives on stdin.
//! - `forks:N`: fork N children that exit at once, reaping each.
//! - `execs:N`: fork N children that each exec /bin/true.
//! - `tree:C:G`: fork C children that each fork G grandchildren; all stay alive until `release`.
//! - `release`: let the tree's processes exit and reap them.
//! - `storm:SECS`: fork-and-reap as fast as possible for SECS seconds; prints "forks <n>".
//! - `burn:SECS`: burn SECS of CPU in this process.
//! - `burn-child:SECS`: fork a child that burns SECS of CPU; wait for it.
//! - `spin:N:SECS`: fork N children that each busy-loop for SECS of wall time (whatever CPU
//!   they get), at once; wait for them all.
//! - `alloc:MB`: allocate and touch MB MiB (kept until exit); prints "alloc ok" (or dies).
//! - `thread-forks:N`: fork N exiting children from a second thread.
//! - `threads:N`: start N threads that idle until exit (no processes).
//! - `sleep:SECS`: sleep.
//! - `connect:PATH`: connect to the unix socket PATH and hold the connection (as a launcher does).
//! - `sleeper`: fork a child that sleeps until killed; print "sleeper <pid>". Children that die
//!   are reaped at once (a thread waits for them), so their pids are free again.
//! - `thread-sleeper`: from a second thread (that lives on), fork a child that sleeps until
//!   killed; print "thread-sleeper <pid>".
//! - `sleeper-at:PID`: like `sleeper`, the child with exactly that pid (clone3's `set_tid`:
//!   root, Linux 5.5+); fails (exit 4) if the pid is taken.
//! - `as-pid:PID`: the steps after this one run in a child with exactly that pid (as
//!   `sleeper-at`); this process waits for it and exits with its code.
//! - `as-user:UID`: become uid and gid UID, with no groups (root's workload only).
//! - `chain`: fork a child subreaper that runs a fork chain (each link forks its successor and
//!   exits at once) until killed; print "chain <pid>".
//! - `serve:MIB`: serve HTTP on 127.0.0.1 (a port the kernel picks) from a thread: every
//!   request gets MIB MiB; prints "port <n>".
//! - `fetch:PORT:N`: GET http://127.0.0.1:PORT/ N times, reading each body to its end (PORT 0:
//!   this workload's own `serve`); prints "fetched <bytes>".
//! - `exit:CODE`: exit with CODE.
//! - `env-bomb`: rewrite this process's environment area (what /proc/<pid>/environ shows) into
//!   `a=` entries, as many as fit: the shape that costs a parser of whole environments most.
//! - `leader-exit`: start a thread that runs the steps after this one, then exit the main
//!   thread alone (the process lives on without its leader; a tree started before is left as
//!   it is). When the steps are done, the process exits 0.
// Test code: a failed unwrap is a failed test, with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::{
    io::{BufRead as _, Write as _},
    time::{Duration, Instant},
};

use nix::{
    sys::wait::waitpid,
    unistd::{ForkResult, Pid, close, fork, pipe, read},
};

struct Tree {
    release_w: Option<std::os::fd::OwnedFd>,
    children: Vec<Pid>,
}

fn main() {
    run(std::env::args().skip(1).collect());
}

/// Run `steps` in order on this thread.
fn run(steps: Vec<String>) {
    let mut tree = Tree {
        release_w: None,
        children: Vec::new(),
    };
    let mut kept: Vec<Vec<u8>> = Vec::new();
    let mut connections = Vec::new();
    let mut served_port = 0u16;
    for (i, step) in steps.iter().enumerate() {
        let mut parts = step.split(':');
        let cmd = parts.next().unwrap_or_default();
        let num = |s: Option<&str>| -> f64 { s.and_then(|v| v.parse().ok()).unwrap_or(0.0) };
        let arg = parts.clone().next().unwrap_or_default().to_string();
        let a = num(parts.next());
        let b = num(parts.next());
        match cmd {
            "ready" => say(&format!("ready {}", std::process::id())),
            "wait" => {
                let mut line = String::new();
                let _ = std::io::stdin().lock().read_line(&mut line);
            }
            "forks" => (0..a as u64).for_each(|_| fork_and_reap(|| {})),
            "execs" => (0..a as u64).for_each(|_| {
                fork_and_reap(|| {
                    let _ = nix::unistd::execv(c"/bin/true", &[c"true"]);
                })
            }),
            "tree" => start_tree(&mut tree, a as usize, b as usize),
            "release" => release(&mut tree),
            "storm" => {
                let end = Instant::now() + Duration::from_secs_f64(a);
                let mut n = 0u64;
                while Instant::now() < end {
                    fork_and_reap(|| {});
                    n += 1;
                }
                say(&format!("forks {n}"));
            }
            "burn" => burn(a),
            "burn-child" => fork_and_reap(|| burn(a)),
            "spin" => spin(a as usize, b),
            "alloc" => {
                let mut v = vec![0u8; (a * 1024.0 * 1024.0) as usize];
                // Touch every page so it is really resident.
                v.iter_mut().step_by(4096).for_each(|x| *x = 1);
                kept.push(v);
                say("alloc ok");
            }
            "thread-forks" => {
                let n = a as u64;
                std::thread::spawn(move || (0..n).for_each(|_| fork_and_reap(|| {})))
                    .join()
                    .expect("forking thread");
            }
            "threads" => (0..a as u64).for_each(|_| {
                std::thread::spawn(|| {
                    loop {
                        std::thread::sleep(Duration::from_secs(3600));
                    }
                });
            }),
            "sleep" => std::thread::sleep(Duration::from_secs_f64(a)),
            "connect" => match std::os::unix::net::UnixStream::connect(&arg) {
                Ok(c) => connections.push(c),
                Err(e) => eprintln!("workload: connect {arg}: {e}"),
            },
            "sleeper" => {
                // SAFETY: the child only pauses until it is killed.
                match unsafe { fork() }.expect("fork") {
                    ForkResult::Child => loop {
                        nix::unistd::pause();
                    },
                    ForkResult::Parent { child } => say(&format!("sleeper {child}")),
                }
                // After the fork: a new thread takes a pid too, and a test may have chosen the
                // child's.
                start_reaper();
            }
            "thread-sleeper" => {
                // A child of a thread other than the main one: the kernel lists it only in
                // that thread's children file. The thread lives on (a child's parent is the
                // thread that forked it).
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    // SAFETY: the child only pauses until it is killed.
                    match unsafe { fork() }.expect("fork") {
                        ForkResult::Child => loop {
                            nix::unistd::pause();
                        },
                        ForkResult::Parent { child } => {
                            let _ = tx.send(child);
                            loop {
                                std::thread::sleep(Duration::from_secs(3600));
                            }
                        }
                    }
                });
                let child = rx.recv().expect("the thread forked");
                say(&format!("thread-sleeper {child}"));
            }
            "sleeper-at" => {
                // The child takes exactly pid ARG (or the step fails): no race with whatever
                // else forks on the machine, as setting the kernel's last pid has.
                match fork_at(a as i32) {
                    None => loop {
                        nix::unistd::pause();
                    },
                    Some(child) => say(&format!("sleeper {child}")),
                }
                start_reaper();
            }
            "as-user" => {
                // Root's workload becomes user ARG (real, effective and saved ids; no groups).
                let (uid, gid) = (
                    nix::unistd::Uid::from_raw(a as u32),
                    nix::unistd::Gid::from_raw(a as u32),
                );
                nix::unistd::setgroups(&[]).expect("setgroups");
                nix::unistd::setresgid(gid, gid, gid).expect("setresgid");
                nix::unistd::setresuid(uid, uid, uid).expect("setresuid");
            }
            "as-pid" => match fork_at(a as i32) {
                // The child, with pid ARG, runs the steps after this one; this process waits
                // for it and exits as it did.
                None => {
                    run(steps[i + 1..].to_vec());
                    std::process::exit(0)
                }
                Some(child) => {
                    let code = match waitpid(Pid::from_raw(child), None) {
                        Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => c,
                        _ => 1,
                    };
                    std::process::exit(code)
                }
            },
            "chain" => {
                start_reaper();
                // SAFETY: the child is single-threaded: it forks and exits only.
                match unsafe { fork() }.expect("fork") {
                    ForkResult::Child => run_chain(),
                    ForkResult::Parent { child } => say(&format!("chain {child}")),
                }
            }
            "serve" => served_port = serve((a * 1024.0 * 1024.0) as usize),
            "fetch" => {
                let port = if a == 0.0 { served_port } else { a as u16 };
                let bytes: usize = (0..b as u64).map(|_| fetch(port)).sum();
                say(&format!("fetched {bytes}"));
            }
            "exit" => std::process::exit(a as i32),
            "env-bomb" => env_bomb(),
            "leader-exit" => {
                let rest = steps[i + 1..].to_vec();
                std::thread::spawn(move || {
                    run(rest);
                    std::process::exit(0)
                });
                // SAFETY: the raw exit syscall ends this thread only, as pthread_exit ends, but
                // without its forced unwind through Rust's frames (which catch_unwind in std's
                // main would abort on). Nothing here is used again; the process lives on in the
                // thread just started, its descriptors and memory with it.
                unsafe { libc::syscall(libc::SYS_exit, 0) };
                unreachable!("the exit syscall returned");
            }
            // Wait (up to 60 s) until this process's cgroup path contains ARG: a job script's
            // CMD that starts before its launcher is admitted burns nothing outside.
            "in-cgroup" => {
                let end = Instant::now() + Duration::from_secs(60);
                while !std::fs::read_to_string("/proc/self/cgroup")
                    .is_ok_and(|c| c.lines().any(|l| l.contains(&arg)))
                {
                    if Instant::now() > end {
                        eprintln!("workload: not in a cgroup with {arg:?} after 60 s");
                        std::process::exit(3);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            other => {
                eprintln!("workload: unknown step {other:?}");
                std::process::exit(2);
            }
        }
    }
    release(&mut tree);
    drop(kept);
    drop(connections);
}

/// A thread that reaps every child of this process as it dies (once per process).
fn start_reaper() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        std::thread::spawn(|| {
            loop {
                if waitpid(None::<Pid>, None).is_err() {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
    });
}

/// A child subreaper whose descendants form a fork chain: each link forks the next and exits,
/// so the chain's one live link is always new, and orphaned here.
fn run_chain() -> ! {
    // SAFETY: prctl with these arguments has no memory effects.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    // A process group of its own: the test ends the whole chain with one kill of the group.
    let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
    // SAFETY: the first link only forks and exits.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => loop {
            // SAFETY: single-threaded link: fork, then the parent _exits.
            match unsafe { fork() } {
                Ok(ForkResult::Child) => {}
                // SAFETY: async-signal-safe exit.
                _ => unsafe { libc::_exit(0) },
            }
        },
        ForkResult::Parent { .. } => loop {
            // Reap the orphaned links.
            let _ = waitpid(None::<Pid>, None);
        },
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn burn(secs: f64) {
    let start = cpu_time();
    let mut x = 0u64;
    while cpu_time() - start < secs {
        for i in 0..100_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
        std::hint::black_box(x);
    }
}

fn spin(children: usize, secs: f64) {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut pids = Vec::new();
    for _ in 0..children {
        // SAFETY: single-threaded here; the child only loops on the clock and exits.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                let mut x = 0u64;
                while Instant::now() < end {
                    for i in 0..10_000u64 {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
                    }
                    std::hint::black_box(x);
                }
                // SAFETY: async-signal-safe exit.
                unsafe { libc::_exit(0) }
            }
            ForkResult::Parent { child } => pids.push(child),
        }
    }
    for pid in pids {
        let _ = waitpid(pid, None);
    }
}

fn cpu_time() -> f64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID).expect("clock");
    t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9
}

/// Fork a child that runs `child` and exits 0; wait for it.
fn fork_and_reap(child: impl FnOnce()) {
    // SAFETY: the child only runs `child` (single-threaded callers, or code that does not touch
    // locks held by other threads) and then _exits.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            child();
            // SAFETY: _exit is async-signal-safe.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            let _ = waitpid(child, None);
        }
    }
}

fn start_tree(tree: &mut Tree, children: usize, grandchildren: usize) {
    let (r, w) = pipe().expect("pipe");
    // Each child reports here once its grandchildren exist, so the whole tree is there when
    // this step returns.
    let (done_r, done_w) = pipe().expect("pipe");
    for _ in 0..children {
        // SAFETY: single-threaded here; the child only forks, reads and exits.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                let _ = close(w);
                drop(done_r);
                let mut kids = Vec::new();
                for _ in 0..grandchildren {
                    // SAFETY: as above.
                    match unsafe { fork() }.expect("fork") {
                        ForkResult::Child => {
                            wait_eof(&r);
                            // SAFETY: async-signal-safe exit.
                            unsafe { libc::_exit(0) }
                        }
                        ForkResult::Parent { child } => kids.push(child),
                    }
                }
                let _ = nix::unistd::write(&done_w, b"x");
                drop(done_w);
                wait_eof(&r);
                for k in kids {
                    let _ = waitpid(k, None);
                }
                // SAFETY: async-signal-safe exit.
                unsafe { libc::_exit(0) }
            }
            ForkResult::Parent { child } => tree.children.push(child),
        }
    }
    drop(r);
    drop(done_w);
    let mut buf = [0u8; 1];
    for _ in 0..children {
        let _ = read(&done_r, &mut buf);
    }
    tree.release_w = Some(w);
}

/// Block until every holder of the pipe's write end has closed it.
fn wait_eof(r: &std::os::fd::OwnedFd) {
    let mut buf = [0u8; 1];
    while matches!(read(r, &mut buf), Ok(n) if n > 0) {}
}

fn release(tree: &mut Tree) {
    tree.release_w = None;
    for c in tree.children.drain(..) {
        let _ = waitpid(c, None);
    }
}

/// An HTTP/1.0 server on 127.0.0.1 in a thread: every request gets `bytes` bytes. Returns its port.
fn serve(bytes: usize) -> u16 {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = listener.local_addr().expect("local_addr").port();
    std::thread::spawn(move || {
        let body = vec![b'x'; 1 << 16];
        for mut conn in listener.incoming().flatten() {
            // The request's header ends with an empty line.
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.ends_with(b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let _ = write!(conn, "HTTP/1.0 200 OK\r\nContent-Length: {bytes}\r\n\r\n");
            let mut left = bytes;
            while left > 0 {
                let n = left.min(body.len());
                if conn.write_all(&body[..n]).is_err() {
                    break;
                }
                left -= n;
            }
        }
    });
    say(&format!("port {port}"));
    port
}

/// GET http://127.0.0.1:`port`/ and read the whole response; returns the bytes read.
fn fetch(port: u16) -> usize {
    use std::io::{Read as _, Write as _};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    conn.write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .expect("send the request");
    let mut total = 0;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return total,
            Ok(n) => total += n,
            Err(e) => panic!("reading the response: {e}"),
        }
    }
}

/// Overwrite the environment area (`env_start`..`env_end` of /proc/self/stat) with `a=\0`
/// entries, through /proc/self/mem.
fn env_bomb() {
    use std::os::unix::fs::FileExt as _;
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name's closing parenthesis; env_start and env_end are the 50th
    // and 51st fields of the line.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<u64> = after
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let (start, end) = (fields[50 - 3], fields[51 - 3]);
    let len = (end - start) as usize;
    let mut bytes: Vec<u8> = b"a=\0".iter().copied().cycle().take(len).collect();
    if let Some(last) = bytes.last_mut() {
        *last = 0;
    }
    let mem = std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/mem")
        .unwrap();
    mem.write_all_at(&bytes, start).unwrap();
    say(&format!("env-bomb {len}"));
}

/// Fork a child with pid `pid` (clone3 with `set_tid`): None in the child, the child's pid in
/// the parent; exits 4 if the pid is taken.
fn fork_at(pid: i32) -> Option<i32> {
    /// `struct clone_args` of <linux/sched.h> (version 2: with set_tid).
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
    }
    let tids: [libc::pid_t; 1] = [pid];
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: tids.as_ptr() as u64,
        set_tid_size: 1,
        ..CloneArgs::default()
    };
    // SAFETY: without CLONE_VM, clone3 is a fork: the child has a copy of this address space
    // (its callers fork only while single-threaded, or the child only pauses); `args` and
    // `tids` outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &raw const args,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match r {
        0 => None,
        -1 => {
            let e = std::io::Error::last_os_error();
            eprintln!("workload: clone3 with pid {pid}: {e}");
            std::process::exit(4)
        }
        child => Some(child as i32),
    }
}
