//! `apptheus`: the daemon.
use std::process::ExitCode;

use apptheus::{
    cli::Args,
    daemon::{self, Given},
    gateway::Trust,
    privacy::Privacy,
    signals, telemetry,
    webconfig::Web,
};
use clap::Parser as _;

fn main() -> ExitCode {
    // Bad flags: clap prints the flag and exits 2.
    let args = Args::parse();
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "apptheus: must run as root (it loads eBPF programs, creates cgroups and reads every process's /proc)"
        );
        return ExitCode::from(1);
    }
    // No terminal, before any thread starts (see `signals`).
    signals::detach();
    if let Err(e) = telemetry::init(args.log_level, args.log_format) {
        eprintln!("apptheus: {e:#}");
        return ExitCode::from(1);
    }
    // Certificates and keys are read here, before anything starts: a bad file stops the daemon
    // rather than letting it serve unprotected.
    let web = match args.web_config_file.as_deref().map(Web::load).transpose() {
        Ok(web) => web,
        Err(e) => {
            eprintln!("apptheus: {e:#}");
            return ExitCode::from(2);
        }
    };
    // The salt is read and checked before anything starts: a bad file stops the daemon rather
    // than letting it publish names in clear.
    let privacy = match args.privacy_hash_salt_file.as_deref() {
        None => Privacy::off(),
        Some(path) => match Privacy::from_salt_file(path) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("apptheus: {e}");
                return ExitCode::from(2);
            }
        },
    };
    // The admin group's name is resolved once, now: membership is then the kernel's word on
    // each caller (SO_PEERGROUPS), never the group database's.
    let admin_gid = match args.query_admin_group.as_deref() {
        None => None,
        Some(name) => match nix::unistd::Group::from_name(name) {
            Ok(Some(group)) => Some(group.gid.as_raw()),
            Ok(None) => {
                eprintln!("apptheus: --query.admin-group {name}: no such group");
                return ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("apptheus: --query.admin-group {name}: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let trust = match Trust::new(args.trust_path.paths()) {
        Ok((trust, warnings)) => {
            for w in warnings {
                tracing::warn!("{w}");
            }
            trust
        }
        Err(e) => {
            eprintln!("apptheus: {e:#}");
            return ExitCode::from(2);
        }
    };
    if trust.paths().is_empty() {
        tracing::warn!("--trust.path is empty: every launcher will be refused");
    }
    // Admission holds a pidfd per process of a launcher's tree until it is moved: room for that
    // beyond the usual 1024 descriptors (the hard limit is the administrator's to set).
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let _ =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
    // glibc gives each thread that allocates its own arena; a burst of short blocking tasks
    // (a connection flood) would leave many half-used arenas resident. Two are plenty here.
    // SAFETY: mallopt has no memory-safety preconditions.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        // Blocking work (cgroup reads, /proc, admissions) is short; a small pool bounds memory.
        .max_blocking_threads(32)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("apptheus: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    if privacy.is_on() {
        tracing::info!(
            "--privacy.hash-salt-file: user names, uids (also in cgroup paths) and home paths are published as keyed hashes"
        );
    }
    let given = Given {
        trust,
        web,
        privacy,
        admin_gid,
    };
    match runtime.block_on(daemon::run(args, given)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "apptheus failed");
            ExitCode::from(1)
        }
    }
}
