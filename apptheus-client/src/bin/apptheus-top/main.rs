//! `apptheus-top`: the containers of the local daemon in the terminal, busiest first, refreshed
//! every second; or, with `--once`, the table once as plain text, for scripts.
//!
//! It asks the daemon's query socket on this node, which shows a user their own containers
//! (root and `--query.admin-group`, every one), and needs no privilege; with `--url`, the
//! daemon's `/api/containers` over HTTP (remote use), with the TLS and basic auth of its
//! `--web.config.file` when given.
mod screen;
mod source;
mod table;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use apptheus_client::{http, query};
use clap::Parser as _;

use crate::source::Source;

/// The containers of the local apptheus daemon, busiest first.
///
/// Keys: c sort by CPU, m by memory, n by name, u by user; q quits.
#[derive(clap::Parser, Debug)]
#[command(name = "apptheus-top", version)]
struct Args {
    /// The daemon's query socket on this node (the default source).
    #[arg(long, value_name = "PATH", default_value = query::DEFAULT_SOCKET)]
    socket: PathBuf,

    /// Ask the daemon's HTTP API at this address instead (https:// when its web config has
    /// TLS): every container, for the monitoring system and administrators.
    #[arg(long, visible_alias = "address", value_name = "URL")]
    url: Option<String>,

    /// Print the table once, as plain text, and exit.
    #[arg(long)]
    once: bool,

    /// The order of the rows (the live view starts with it).
    #[arg(long, value_enum, default_value_t = table::Sort::Cpu)]
    sort: table::Sort,

    /// How often the live view asks the daemon.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_interval)]
    interval: Duration,

    /// CA certificates (PEM) that the daemon's TLS certificate must chain to (the system's
    /// roots otherwise).
    #[arg(long = "tls.ca-file", value_name = "FILE")]
    ca_file: Option<PathBuf>,

    /// Accept any TLS certificate (a test machine's self-signed one).
    #[arg(long = "tls.insecure-skip-verify")]
    insecure_skip_verify: bool,

    /// Basic auth user name (a `basic_auth_users` entry of the daemon's web config).
    #[arg(long = "auth.user", value_name = "NAME")]
    user: Option<String>,

    /// File whose first line is the basic auth password.
    #[arg(long = "auth.password-file", value_name = "FILE", requires = "user")]
    password_file: Option<PathBuf>,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = apptheus_api::duration::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(100) {
        return Err("at least 100ms".into());
    }
    Ok(d)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("apptheus-top: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let client = match &args.url {
        Some(url) => Source::Http(http::Client::new(&http::Options {
            address: url,
            ca_file: args.ca_file.as_deref(),
            insecure_skip_verify: args.insecure_skip_verify,
            user: args.user.as_deref(),
            password_file: args.password_file.as_deref(),
        })?),
        None => Source::Query(query::Client::new(&args.socket)),
    };
    // Read once before taking the terminal: a wrong address or password is a plain error.
    let first = client.fetch()?;
    if args.once {
        print!("{}", table::plain(&first, args.sort));
        return Ok(());
    }
    screen::run(client, first, args.sort, args.interval)
}
