//! The daemon and terminals: it has none, and no terminal can stop it.
//!
//! At start it leaves any terminal it was started from (a session of its own, as systemd gives
//! it; when run by hand, its controlling terminal given up). Every file it opens on a user's
//! word is opened with `O_NOCTTY` (`asuser`), so it never gains one. And should a terminal's
//! signal reach it all the same, it is logged, not obeyed: the daemon stops on SIGTERM or
//! SIGINT sent by root (`systemctl stop`, `kill`), never on one the kernel sends for a
//! terminal (^C, ^\, ^Z, a hang-up), which a user who held its terminal could type.
use std::os::unix::fs::OpenOptionsExt as _;

use nix::sys::signal::Signal;
use signal_hook::{
    consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGTSTP, SIGTTIN, SIGTTOU},
    iterator::{SignalsInfo, exfiltrator::origin::WithOrigin},
    low_level::siginfo::{Cause, Origin},
};
use tokio_util::sync::CancellationToken;

nix::ioctl_none_bad!(tiocnotty, libc::TIOCNOTTY);

/// Leave the terminal the daemon was started from, if any: a session of its own, or, where it
/// leads a process group already (a shell's job, systemd's service), its controlling terminal
/// given up. Call before any thread starts.
pub fn detach() {
    if nix::unistd::setsid().is_ok() {
        return;
    }
    let Ok(tty) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOCTTY)
        .open("/dev/tty")
    else {
        // ENXIO: no controlling terminal.
        return;
    };
    // SAFETY: TIOCNOTTY takes no argument; `tty` is an open descriptor for the duration.
    if let Err(e) = unsafe { tiocnotty(std::os::fd::AsRawFd::as_raw_fd(&tty)) } {
        eprintln!("apptheus: cannot give up the controlling terminal: {e}");
    }
}

/// Cancelled when root asks the daemon to stop (SIGTERM or SIGINT sent with kill(2) or
/// sigqueue(3) by uid 0). Every other signal of a terminal is logged and ignored.
pub fn stop_requested() -> std::io::Result<CancellationToken> {
    let stop = CancellationToken::new();
    let mut signals = SignalsInfo::<WithOrigin>::new([
        SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGTSTP, SIGTTIN, SIGTTOU,
    ])?;
    let token = stop.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for origin in signals.forever() {
                if is_stop(&origin) {
                    token.cancel();
                } else {
                    log_ignored(&origin);
                }
            }
        })?;
    Ok(stop)
}

/// SIGTERM or SIGINT, sent by root.
fn is_stop(origin: &Origin) -> bool {
    matches!(origin.signal, SIGTERM | SIGINT)
        && matches!(origin.cause, Cause::Sent(_))
        && origin.process.as_ref().is_some_and(|p| p.uid == 0)
}

fn log_ignored(origin: &Origin) {
    let signal = Signal::try_from(origin.signal).map_or("unknown", Signal::as_str);
    let (pid, uid) = origin
        .process
        .as_ref()
        .map_or((None, None), |p| (Some(p.pid), Some(p.uid)));
    tracing::warn!(
        signal,
        cause = ?origin.cause,
        sender_pid = pid,
        sender_uid = uid,
        "signal ignored: the daemon stops only on SIGTERM or SIGINT sent by root"
    );
}
