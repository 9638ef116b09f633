//! `apptheus-report [CONTAINER | --job ID [--jobstats] | --user NAME] [--json] [--from FILE |
//! --prometheus URL]`: how a container, or a job's containers on this node (or on every node,
//! from the fleet's central store), used what it was allowed, with notes in plain words; or the
//! job's record in jobstats' `JS1:` format. From the daemon's query socket (a user sees their own containers), or from a
//! summary file (`--container.summary-file`, for administrators).
use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::Context as _;
use apptheus_api::Summary;
use apptheus_client::{
    fleet, jobstats, query,
    report::{self, Figures, Style, Thresholds},
    terminal,
};
use clap::Parser as _;

/// A container's (or a job's) efficiency report, with notes on what to change.
#[derive(clap::Parser, Debug)]
#[command(name = "apptheus-report", version)]
struct Args {
    /// The container's id (as apptheus-top shows it); none: every container you can see.
    container: Option<String>,

    /// Every container of this batch job on this node, and their total.
    #[arg(long, value_name = "ID", conflicts_with = "container")]
    job: Option<String>,

    /// The containers of this user (root and the daemon's admin group see every user's).
    #[arg(long, value_name = "NAME")]
    user: Option<String>,

    /// The figures and notes as JSON, for scripts (with --jobstats: the record's JSON).
    #[arg(long)]
    json: bool,

    /// Print the job's summary as jobstats keeps it in Slurm's AdminComment: `JS1:` and the
    /// base64 of its gzipped JSON (this node's part, keyed by --node).
    #[arg(long, requires = "job")]
    jobstats: bool,

    /// The node's name in the --jobstats record (jobstats keys nodes by host name).
    #[arg(long, value_name = "NAME", requires = "jobstats")]
    node: Option<String>,

    /// Read ended containers from this summary file (`--container.summary-file`) instead of
    /// asking the daemon.
    #[arg(long, value_name = "FILE")]
    from: Option<PathBuf>,

    /// Read the job's containers on every node from this Prometheus-compatible HTTP API (the
    /// fleet's central store) instead of asking this node's daemon; needs --job.
    #[arg(long, value_name = "URL", requires = "job", conflicts_with = "from")]
    prometheus: Option<String>,

    /// With --prometheus: only series with this `cluster` label.
    #[arg(long, value_name = "NAME", requires = "prometheus")]
    cluster: Option<String>,

    /// With --prometheus: how far back the job's containers are looked for.
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = duration, requires = "prometheus")]
    lookback: f64,

    /// With --prometheus: wait up to this long for every container of the job to show as ended
    /// in the store (its final values remote-written), asking again every second; then report
    /// what the store has. For a Slurm epilog, which runs as the job ends.
    #[arg(long, value_name = "DURATION", value_parser = duration, requires = "prometheus")]
    wait_ended: Option<f64>,

    /// The daemon's query socket.
    #[arg(long, value_name = "PATH", default_value = query::DEFAULT_SOCKET)]
    socket: PathBuf,

    /// Note a CPU efficiency below this fraction of the CPUs allowed.
    #[arg(long = "note.cpu-efficiency", value_name = "FRACTION", default_value_t = Thresholds::default().cpu_efficiency, value_parser = fraction)]
    cpu_efficiency: f64,

    /// Note a memory peak below this fraction of the memory limit.
    #[arg(long = "note.memory-fraction", value_name = "FRACTION", default_value_t = Thresholds::default().memory_fraction, value_parser = fraction)]
    memory_fraction: f64,

    /// Note throttling in more than this fraction of the CPU periods.
    #[arg(long = "note.throttled-fraction", value_name = "FRACTION", default_value_t = Thresholds::default().throttled_fraction, value_parser = fraction)]
    throttled_fraction: f64,

    /// Note memory or I/O stalls longer than this fraction of the wall time.
    #[arg(long = "note.stall-fraction", value_name = "FRACTION", default_value_t = Thresholds::default().stall_fraction, value_parser = fraction)]
    stall_fraction: f64,

    /// Note a container that used no CPU for at least this long at its end (or until now).
    #[arg(long = "note.idle-after", value_name = "DURATION", default_value = "5m", value_parser = duration)]
    idle_after: f64,
}

fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
        _ => Err(format!("{s:?} is not a fraction between 0 and 1")),
    }
}

fn duration(s: &str) -> Result<f64, String> {
    apptheus_api::duration::parse_duration(s)
        .map(|d| d.as_secs_f64())
        .map_err(|e| e.to_string())
}

/// A summary file's line, at most (a record is about 2 KiB).
const MAX_LINE: u64 = 64 << 10;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("apptheus-report: {}", terminal::safe(&format!("{e:#}")));
            ExitCode::from(2)
        }
    }
}

/// Print the report; false when nothing matched.
fn run(args: &Args) -> anyhow::Result<bool> {
    let thresholds = Thresholds {
        cpu_efficiency: args.cpu_efficiency,
        memory_fraction: args.memory_fraction,
        throttled_fraction: args.throttled_fraction,
        stall_fraction: args.stall_fraction,
        idle_seconds: args.idle_after,
        ..Thresholds::default()
    };
    if let (Some(url), Some(job)) = (&args.prometheus, &args.job) {
        return fleet_report(args, url, job, &thresholds);
    }
    let figures: Vec<Figures> = match &args.from {
        Some(path) => from_file(path)?,
        None => from_daemon(args)?,
    }
    .into_iter()
    .filter(|f| args.container.as_ref().is_none_or(|c| &f.container == c))
    .filter(|f| args.job.is_none() || f.job_id == args.job)
    .filter(|f| args.user.as_ref().is_none_or(|u| &f.user == u))
    .map(|f| f.with_notes(&thresholds))
    .collect();
    if figures.is_empty() {
        let what = match (&args.container, &args.job) {
            (Some(c), _) => format!("no such container: {c}"),
            (_, Some(j)) => format!("no container of job {j} here"),
            _ => "no container to report".to_string(),
        };
        eprintln!("apptheus-report: {}", terminal::safe(&what));
        return Ok(false);
    }
    if args.jobstats {
        return jobstats_record(args, figures);
    }
    let total = args.job.as_deref().map(|j| report::job_total(j, &figures));
    if args.json {
        let doc = serde_json::json!({ "containers": figures, "job": total });
        println!("{doc}");
        return Ok(true);
    }
    let style = Style {
        colour: terminal::colour(std::io::stdout()),
    };
    let mut out = String::new();
    if let Some(t) = &total {
        out.push_str(&report::job_text(t, style, "this node"));
        out.push('\n');
    }
    for (i, f) in figures.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&report::text(f, style));
    }
    print!("{out}");
    Ok(true)
}

/// The job's record in jobstats' format: its JSON with --json, else the `JS1:` text.
fn jobstats_record(args: &Args, figures: Vec<Figures>) -> anyhow::Result<bool> {
    let node = match &args.node {
        Some(n) => n.clone(),
        None => nix::unistd::gethostname()
            .context("this host's name (or give --node)")?
            .to_string_lossy()
            .into_owned(),
    };
    print_record(args, &BTreeMap::from([(node, figures)]))
}

fn print_record(args: &Args, nodes: &BTreeMap<String, Vec<Figures>>) -> anyhow::Result<bool> {
    let record = jobstats::record(nodes);
    if args.json {
        println!("{}", serde_json::to_string(&record)?);
    } else {
        println!(
            "{}",
            jobstats::encode(&record).context("encoding the record")?
        );
    }
    Ok(true)
}

/// The job on every node, from the fleet's store: the job's total, each node's, then each
/// container's report (or, with --jobstats, the record with a part per node).
fn fleet_report(
    args: &Args,
    url: &str,
    job: &str,
    thresholds: &Thresholds,
) -> anyhow::Result<bool> {
    let store = fleet::Store::new(url, args.cluster.as_deref());
    let window = std::time::Duration::from_secs_f64(args.lookback);
    let wait = std::time::Duration::from_secs_f64(args.wait_ended.unwrap_or(0.0));
    let started = std::time::Instant::now();
    let found = loop {
        let now = apptheus_api::time::unix_seconds(std::time::SystemTime::now());
        let found = store
            .job(job, window, now)
            .with_context(|| format!("job {job}'s containers in the store"))?;
        let ended = !found.is_empty()
            && found
                .values()
                .flatten()
                .all(|f| f.state == apptheus_api::State::Ended);
        if ended || started.elapsed() >= wait {
            break found;
        }
        std::thread::sleep(std::time::Duration::from_secs(1).min(wait - started.elapsed()));
    };
    let nodes: BTreeMap<String, Vec<Figures>> = found
        .into_iter()
        .map(|(node, figures)| {
            let figures = figures.into_iter().map(|f| f.with_notes(thresholds));
            (node, figures.collect())
        })
        .collect();
    if nodes.is_empty() {
        eprintln!(
            "apptheus-report: {}",
            terminal::safe(&format!("no container of job {job} in the store at {url}"))
        );
        return Ok(false);
    }
    if args.jobstats {
        return print_record(args, &nodes);
    }
    let all: Vec<Figures> = nodes.values().flatten().cloned().collect();
    let total = report::job_total(job, &all);
    let per_node: BTreeMap<&String, report::JobTotal> = nodes
        .iter()
        .map(|(node, figures)| (node, report::job_total(job, figures)))
        .collect();
    if args.json {
        let doc = serde_json::json!({
            "job": total,
            "nodes": nodes.iter().map(|(node, figures)| {
                (node.clone(), serde_json::json!({ "total": per_node[node], "containers": figures }))
            }).collect::<serde_json::Map<_, _>>(),
        });
        println!("{doc}");
        return Ok(true);
    }
    let style = Style {
        colour: terminal::colour(std::io::stdout()),
    };
    let count = nodes.len();
    let mut out = report::job_text(
        &total,
        style,
        &format!("{count} node{}", if count == 1 { "" } else { "s" }),
    );
    for (node, figures) in &nodes {
        out.push('\n');
        out.push_str(&report::job_text(
            &per_node[node],
            style,
            &format!("node {node}"),
        ));
        for f in figures {
            out.push('\n');
            out.push_str(&report::text(f, style));
        }
    }
    print!("{out}");
    Ok(true)
}

fn from_daemon(args: &Args) -> anyhow::Result<Vec<Figures>> {
    let client = query::Client::new(&args.socket);
    let containers = match &args.container {
        // One container: asked by id, so the daemon answers for it alone.
        Some(id) => {
            let now = apptheus_api::time::unix_seconds(std::time::SystemTime::now());
            return match client.container(id) {
                Ok(c) => Ok(vec![Figures::of_container(&c, now, 0.0)]),
                Err(query::Error::NoSuchContainer(_)) => Ok(Vec::new()),
                Err(e) => Err(e.into()),
            };
        }
        None => client.containers(true)?,
    };
    Ok(containers
        .containers
        .iter()
        .map(|c| Figures::of_container(c, containers.time, containers.step_seconds))
        .collect())
}

/// The records of a summary file, oldest first; a line that is not a record (cut short,
/// another program's) is skipped and counted on stderr.
fn from_file(path: &std::path::Path) -> anyhow::Result<Vec<Figures>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = BufReader::new(file);
    let (mut figures, mut skipped) = (Vec::new(), 0u64);
    loop {
        let mut line = Vec::new();
        let n = (&mut reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        if !line.ends_with(b"\n") && n as u64 == MAX_LINE {
            // The rest of an overlong line.
            skipped += 1;
            reader.skip_until(b'\n')?;
            continue;
        }
        match serde_json::from_slice::<Summary>(&line) {
            Ok(s) => figures.push(Figures::of_summary(&s)),
            Err(_) if line.iter().all(u8::is_ascii_whitespace) => {}
            Err(_) => skipped += 1,
        }
    }
    if skipped > 0 {
        eprintln!(
            "apptheus-report: {skipped} line(s) of {} are not summary records; skipped",
            terminal::safe(&path.display().to_string())
        );
    }
    Ok(figures)
}
