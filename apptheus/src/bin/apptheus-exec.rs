//! `apptheus-exec [--socket PATH] -- CMD [ARGS...]`: run CMD monitored by apptheus.
//!
//! Like Apptainer's starter it forks CMD first, then connects to the daemon's socket and holds
//! the connection until CMD exits; the daemon adopts CMD's whole tree through this process. It
//! exits with CMD's status (128+N when CMD was killed by signal N). If the daemon cannot be
//! reached, CMD still runs, with one warning on stderr.
use std::{
    os::unix::{
        net::UnixStream,
        process::{CommandExt as _, ExitStatusExt as _},
    },
    path::PathBuf,
    process::{Command, ExitCode},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use clap::Parser;
use nix::sys::signal::{SigSet, Signal};

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
    /// The command to run, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
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

fn main() -> ExitCode {
    let args = Args::parse();
    let mut set = SigSet::empty();
    FORWARDED.iter().for_each(|&s| set.add(s));
    // Block them here; a thread picks them up below. A child inherits the mask across fork and
    // exec, so the command unblocks them before its exec.
    if let Err(e) = set.thread_block() {
        eprintln!("apptheus-exec: cannot block signals: {e}");
    }
    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..]);
    // SAFETY: the closure only calls pthread_sigmask, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || set.thread_unblock().map_err(std::io::Error::from));
    }
    let mut child = match cmd.spawn() {
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
    // Connect after the fork, as Apptainer's starter does; held until CMD exits.
    let exiting = Arc::new(AtomicBool::new(false));
    let connection = match UnixStream::connect(&args.socket) {
        Ok(s) => {
            watch_refusal(&s, exiting.clone());
            Some(s)
        }
        Err(e) => {
            eprintln!(
                "apptheus-exec: warning: cannot reach apptheus at {} ({e}); running unmonitored",
                args.socket.display()
            );
            None
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
    if let Some(c) = connection {
        let _ = c.shutdown(std::net::Shutdown::Both);
    }
    let code = match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        _ => 1,
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// The daemon never writes; it closes the connection only when it refuses the launcher or stops.
/// Say so once, so the user knows this run is not (or no longer) monitored.
fn watch_refusal(conn: &UnixStream, exiting: Arc<AtomicBool>) {
    let Ok(mut reader) = conn.try_clone() else {
        return;
    };
    std::thread::spawn(move || {
        use std::io::Read as _;
        let mut buf = [0u8; 64];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        // Our own shutdown at exit ends the read too: nothing to say then.
        if exiting.load(Ordering::SeqCst) {
            return;
        }
        eprintln!(
            "apptheus-exec: warning: apptheus closed the connection (it refused this launcher, or stopped); this command is not monitored from here on (is this apptheus-exec in --trust.path? see the daemon's log)"
        );
    });
}
