//! `apptheus-exec [--socket PATH] [--wait D] [--end-wait D] -- CMD [ARGS...]`: run CMD
//! monitored by apptheus.
//!
//! It connects first and leaves last. The child that becomes CMD connects to the daemon's
//! socket (so the daemon adopts the child, not this process), waits (bounded) for the daemon's
//! `ok <id>` line, and only then execs CMD: CMD starts inside the container's cgroup, and its
//! every fork, exec, page and CPU second counts from its first instruction. This process stays
//! outside the container: it holds the connection, passes signals on to CMD, and when CMD has
//! exited waits (bounded) for the daemon's `end <id>` line, sent once the container's final
//! values are taken and its cgroup let go of, so that a batch system removing the job's
//! cgroups after this process finds them empty. It exits with CMD's status (128+N when CMD was
//! killed by signal N). Without a daemon, or refused by it, CMD still runs, with one warning.
use std::{
    io::Read as _,
    os::{
        fd::{AsRawFd as _, OwnedFd, RawFd},
        unix::{
            net::UnixStream,
            process::{CommandExt as _, ExitStatusExt as _},
        },
    },
    path::PathBuf,
    process::{Command, ExitCode},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use apptheus_client::{query, report, terminal};
use clap::Parser;
use nix::{
    errno::Errno,
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::{
        signal::{SigSet, Signal},
        socket::{AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr, connect, recv, socket},
    },
};

#[derive(Parser, Debug)]
#[command(
    name = "apptheus-exec",
    version,
    about = "Run a command monitored by apptheus (per-container CPU, memory, I/O and process metrics)",
    long_about = None
)]
struct Args {
    /// The apptheus daemon's socket.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/run/apptheus/gateway.sock"
    )]
    socket: PathBuf,
    /// How long CMD waits for the daemon's acknowledgement before it runs anyway (longer than
    /// the daemon's --gateway.admission-max-wait, 30s by default).
    #[arg(long, value_name = "DURATION", default_value = "40s", value_parser = duration)]
    wait: Duration,
    /// How long, after CMD exited, to wait for the daemon to take the container's final values
    /// and let go of its cgroup.
    #[arg(long, value_name = "DURATION", default_value = "40s", value_parser = duration)]
    end_wait: Duration,
    /// When CMD has ended, print the container's efficiency report on stderr (as
    /// apptheus-report does). `APPTHEUS_REPORT=1` in the environment does the same, so a site
    /// can turn it on for every job in a prolog.
    #[arg(long, env = "APPTHEUS_REPORT")]
    report: bool,
    /// The daemon's query socket, which --report asks.
    #[arg(long, value_name = "PATH", default_value = query::DEFAULT_SOCKET)]
    query_socket: PathBuf,
    /// The command to run, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

fn duration(s: &str) -> Result<Duration, String> {
    apptheus_api::duration::parse_duration(s).map_err(|e| e.to_string())
}

/// Signals passed on to CMD, so that stopping the launcher (scancel, kill, Ctrl-C) stops the job.
const FORWARDED: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// What the child saw before its exec, told to this process through a pipe: a tag byte and an
/// errno (native endian). Nothing written: acknowledged.
const NOT_CONNECTED: u8 = 1;
const CLOSED: u8 = 2;
const TIMED_OUT: u8 = 3;

/// The longest `ok <id>` line the child looks for (an id is `<exe name>_<pid>`).
const LINE_MAX: usize = 512;

fn main() -> ExitCode {
    let args = Args::parse();
    let mut set = SigSet::empty();
    FORWARDED.iter().for_each(|&s| set.add(s));
    // Block them here; a thread picks them up below. A child inherits the mask across fork and
    // exec, so the command unblocks them before its exec.
    if let Err(e) = set.thread_block() {
        eprintln!("apptheus-exec: cannot block signals: {e}");
    }
    let conn = Connection::new(&args.socket);
    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..]);
    let early = match &conn {
        Ok(c) => Some(c.before_exec(&mut cmd, args.wait, set)),
        Err(_) => None,
    };
    if early.is_none() {
        // SAFETY: the closure only calls pthread_sigmask, which is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || set.thread_unblock().map_err(std::io::Error::from));
        }
    }
    let spawned = cmd.spawn();
    // What the child saw, once it has exec'd (or failed to): its write end is closed then.
    let seen = early.and_then(Early::outcome);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            eprintln!("apptheus-exec: cannot run {}: {e}", args.command[0]);
            // The shell's conventions: 127 not found, 126 not executable.
            return ExitCode::from(if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            });
        }
    };
    let child_pid = nix::unistd::Pid::from_raw(child.id() as i32);
    std::thread::spawn(move || {
        while let Ok(sig) = set.wait() {
            let _ = nix::sys::signal::kill(child_pid, sig);
        }
    });
    let exiting = Arc::new(AtomicBool::new(false));
    let place = args.socket.display();
    let lines = match (conn, seen) {
        (Err(e), _) => {
            eprintln!(
                "apptheus-exec: warning: cannot reach apptheus at {place} ({e}); running unmonitored"
            );
            None
        }
        (Ok(_), Some(Outcome::NotConnected(e))) => {
            eprintln!(
                "apptheus-exec: warning: cannot reach apptheus at {place} ({}); running unmonitored",
                std::io::Error::from(e)
            );
            None
        }
        (Ok(_), Some(Outcome::Closed)) => {
            eprintln!(
                "apptheus-exec: warning: apptheus refused this launcher (not in --trust.path, inside another container, or over a limit: see the daemon's log); running unmonitored"
            );
            None
        }
        (Ok(c), seen) => {
            if let Some(Outcome::TimedOut) = seen {
                eprintln!(
                    "apptheus-exec: warning: apptheus did not acknowledge this launcher within {}; {} runs now, monitored only from its admission if it comes",
                    humantime(args.wait),
                    args.command[0]
                );
            }
            Some(c.lines(exiting.clone()))
        }
    };
    let status = match child.wait() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("apptheus-exec: waiting for {}: {e}", args.command[0]);
            return ExitCode::from(1);
        }
    };
    exiting.store(true, Ordering::SeqCst);
    let mut container = None;
    let mut ended = false;
    if let Some(lines) = lines {
        let deadline = Instant::now() + args.end_wait;
        loop {
            match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Line::End) => {
                    ended = true;
                    break;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Ok(Line::Ok(id)) => container = Some(id),
                Ok(Line::Other) => continue,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    eprintln!(
                        "apptheus-exec: warning: apptheus did not confirm the container's end within {}",
                        humantime(args.end_wait)
                    );
                    break;
                }
            }
        }
    }
    if args.report {
        print_report(&args.query_socket, container.as_deref(), ended);
    }
    let code = match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        _ => 1,
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// `--report`: the container's report on stderr, from the query socket (as its user: the
/// daemon shows a user their own containers).
fn print_report(socket: &std::path::Path, container: Option<&str>, ended: bool) {
    let Some(id) = container else {
        eprintln!("apptheus-exec: no report: this command was not monitored");
        return;
    };
    if !ended {
        eprintln!("apptheus-exec: the report may lack the container's final values");
    }
    let now = apptheus_api::time::unix_seconds(std::time::SystemTime::now());
    match query::Client::new(socket).container(id) {
        Ok(c) => {
            let figures = report::Figures::of_container(&c, now, 0.0)
                .with_notes(&report::Thresholds::default());
            let style = report::Style {
                colour: terminal::colour(std::io::stderr()),
            };
            eprint!("{}", report::text(&figures, style));
        }
        Err(e) => eprintln!(
            "apptheus-exec: no report: {}",
            terminal::safe(&e.to_string())
        ),
    }
}

fn humantime(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// The unix socket the child connects, made here so that this process holds it afterwards.
struct Connection {
    socket: OwnedFd,
    addr: UnixAddr,
}

/// What the child saw before its exec.
enum Outcome {
    /// The connection was not made (no daemon, no socket): why.
    NotConnected(Errno),
    /// The daemon closed it before any acknowledgement: it refused the launcher.
    Closed,
    /// No acknowledgement within `--wait`.
    TimedOut,
}

/// The pipe the child reports on (none if it could not be made).
struct Early(Option<(OwnedFd, OwnedFd)>);

impl Early {
    /// Once the child has exec'd (or failed to): what it saw, None for an acknowledgement.
    fn outcome(self) -> Option<Outcome> {
        // This process's write end goes first: the read ends when the child's copy closed.
        let (read, write) = self.0?;
        drop(write);
        let mut buf = [0u8; 5];
        let mut file = std::fs::File::from(read);
        let mut got = 0;
        while got < buf.len() {
            match file.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        if got < buf.len() {
            return None;
        }
        let errno = i32::from_ne_bytes([buf[1], buf[2], buf[3], buf[4]]);
        Some(match buf[0] {
            NOT_CONNECTED => Outcome::NotConnected(Errno::from_raw(errno)),
            CLOSED => Outcome::Closed,
            _ => Outcome::TimedOut,
        })
    }
}

/// A line the daemon sent.
enum Line {
    /// `ok <id>`: the container's id.
    Ok(String),
    End,
    Other,
}

impl Connection {
    fn new(path: &std::path::Path) -> Result<Connection, std::io::Error> {
        let addr = UnixAddr::new(path)?;
        let socket = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        Ok(Connection { socket, addr })
    }

    /// Have the child connect and wait for `ok` (at most `wait`) before its exec, and tell
    /// what it saw on a pipe whose read end is returned.
    fn before_exec(&self, cmd: &mut Command, wait: Duration, set: SigSet) -> Early {
        let (fd, addr) = (self.socket.as_raw_fd(), self.addr);
        // Without the pipe the child still connects; only the reason of a failure is lost.
        let pipe = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ok();
        let report = pipe.as_ref().map(|(_, w)| w.as_raw_fd());
        // SAFETY: between fork and exec the closure calls only connect, poll, recv, write,
        // clock_gettime and pthread_sigmask, all async-signal-safe, on memory made before the
        // fork (the address, a buffer on the stack); it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if let (Err((tag, errno)), Some(report)) = (acknowledged(fd, &addr, wait), report) {
                    let mut msg = [tag, 0, 0, 0, 0];
                    msg[1..].copy_from_slice(&(errno as i32).to_ne_bytes());
                    // SAFETY: the pipe's write end, open in this child until its exec.
                    let _ = nix::unistd::write(std::os::fd::BorrowedFd::borrow_raw(report), &msg);
                }
                set.thread_unblock().map_err(std::io::Error::from)
            });
        }
        Early(pipe)
    }

    /// The daemon's lines on the connection, from a thread: `ok` first (left there by the
    /// child), `end` at the container's end. The channel closes with the connection; a close
    /// while CMD runs (the daemon stopped) is said once.
    fn lines(self, exiting: Arc<AtomicBool>) -> mpsc::Receiver<Line> {
        let mut stream = UnixStream::from(self.socket);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 256];
            // After `end` the close is the daemon's, whenever CMD's exit is seen here.
            let mut ended = false;
            loop {
                match stream.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
                while let Some(at) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=at).collect();
                    let kind = if line.starts_with(b"end ") {
                        ended = true;
                        Line::End
                    } else if let Some(id) = line.strip_prefix(b"ok ") {
                        Line::Ok(String::from_utf8_lossy(id).trim_end().to_string())
                    } else {
                        Line::Other
                    };
                    let _ = tx.send(kind);
                }
                // The daemon sends two short lines: anything longer is not its.
                if buf.len() > LINE_MAX {
                    break;
                }
            }
            if !ended && !exiting.load(Ordering::SeqCst) {
                eprintln!(
                    "apptheus-exec: warning: apptheus closed the connection (it stopped); this command is not monitored from here on"
                );
            }
        });
        rx
    }
}

/// In the child, before its exec: connect `fd` to `addr` and wait until the daemon's `ok`
/// line can be read (peeked, so that the parent reads it afterwards), at most `wait`. The
/// error names what happened instead: a tag of `Early` and an errno.
fn acknowledged(fd: RawFd, addr: &UnixAddr, wait: Duration) -> Result<(), (u8, Errno)> {
    connect(fd, addr).map_err(|e| (NOT_CONNECTED, e))?;
    let now = || {
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(Duration::from)
            .unwrap_or_default()
    };
    let deadline = now() + wait;
    let mut buf = [0u8; LINE_MAX];
    loop {
        let left = deadline.saturating_sub(now());
        if left.is_zero() {
            return Err((TIMED_OUT, Errno::ETIMEDOUT));
        }
        // SAFETY: `fd` is the socket this process's parent made, open until the exec.
        let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(socket, PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err((CLOSED, e)),
        }
        match recv(fd, &mut buf, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT) {
            Ok(0) => return Err((CLOSED, Errno::ECONNRESET)),
            // A whole line: the daemon sends nothing before its `ok`.
            Ok(n) if buf[..n].contains(&b'\n') || n == buf.len() => return Ok(()),
            Ok(_) | Err(Errno::EAGAIN | Errno::EINTR) => continue,
            Err(e) => return Err((CLOSED, e)),
        }
    }
}
