//! The daemon's wiring: it starts one task per concern (HTTP, gateway, tracker events,
//! sampler) and stops them together through one cancellation token when root sends SIGINT or SIGTERM.
use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use anyhow::{Context as _, Result};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{
    cgroup::Layout,
    cli::Args,
    descriptors,
    gateway::{self, Gateway, Trust},
    history::History,
    http,
    metrics::Metrics,
    privacy::Privacy,
    query::Query,
    recovery,
    registry::{self, Registry},
    sampler::Sampler,
    signals,
    state::StateDir,
    summary::Summaries,
    tracker::{Limits, Tracker},
    webconfig::Web,
};

/// What the daemon was given at start beyond its flags: each read and checked by `main`
/// before anything starts.
pub struct Given {
    pub trust: Trust,
    /// The loaded `--web.config.file`, if given.
    pub web: Option<Web>,
    /// What `--privacy.hash-salt-file` asks.
    pub privacy: Privacy,
    /// `--query.admin-group`'s gid.
    pub admin_gid: Option<u32>,
}

/// Run the daemon with its flags and what `main` read for them.
pub async fn run(args: Args, given: Given) -> Result<()> {
    let Given {
        trust,
        web,
        privacy,
        admin_gid,
    } = given;
    let shutdown = CancellationToken::new();
    let stop = signals::stop_requested().context("installing signal handlers")?;
    let metrics =
        Arc::new(Metrics::with_collectors(args.collector_disable).context("setting up metrics")?);
    let disabled = args.collector_disable.disabled_names();
    if !disabled.is_empty() {
        tracing::info!(
            collectors = disabled.join(",").as_str(),
            "metric groups disabled: neither read nor exported"
        );
    }
    // Opened now: a summary file the daemon cannot write stops it at start.
    let summaries = match &args.container_summary_file {
        Some(path) => Summaries::with_file(path).context("--container.summary-file")?,
        None => Summaries::log_only(),
    };
    let ready = Arc::new(AtomicBool::new(false));
    let mut tasks = JoinSet::new();

    // HTTP first, so /-/healthy answers and /-/ready says 503 while the rest starts.
    let listener = http::bind(&args.web_listen_address).await?;
    tracing::info!(
        address = listener.local_addr()?.to_string().as_str(),
        path = args.web_telemetry_path.as_str(),
        tls = web.as_ref().is_some_and(|w| w.tls.is_some()),
        basic_auth = web.as_ref().is_some_and(|w| !w.config.users.is_empty()),
        "HTTP server listening"
    );
    // The containers' last minutes: kept by the sampler, shown by the page.
    let history = Arc::new(History::new(args.monitor_interval));
    let app = http::router(
        &args.web_telemetry_path,
        http::AppState::new(metrics.clone(), ready.clone()).with_history(history.clone()),
        web.as_ref(),
    );
    let serve = http::serve(
        listener,
        app,
        http::ServeOptions::new(web.as_ref()),
        shutdown.clone(),
    );
    tasks.spawn(serve);

    // Before anything is created: a second daemon on the same state must not start.
    let state_dir = StateDir::open(&args.state_dir)?;
    let saved = state_dir.load();
    let (tracker, events) =
        Tracker::load(tracker_limits(&args)).context("loading the eBPF tracker")?;
    let layout = Layout::detect().context("detecting the cgroup hierarchies")?;
    let (limit, shared) = descriptors::init(
        http::MAX_CONNECTIONS + crate::query::MAX_CONNECTIONS + gateway::MAX_PENDING_CONNECTIONS,
    );
    tracing::info!(
        limit,
        containers = shared,
        "descriptor budget: containers' connections and kept-open probes share the rest of the limit"
    );
    tracing::info!(
        mode = format!("{:?}", layout.mode()).as_str(),
        "cgroup layout detected"
    );
    let registry = Arc::new(Registry::new(
        registry_config(&args, privacy),
        layout,
        Arc::new(tracker),
    ));
    // Containers a previous run left (a crash, an upgrade) are taken back before any launcher
    // is admitted, so that none of their processes can be mistaken for a new container's.
    let sampler = Sampler::new(registry.clone(), metrics.clone(), Some(state_dir))
        .with_collectors(args.collector_disable)
        .with_summaries(summaries)
        .with_history(history.clone());
    let r = registry.clone();
    let (sampler, found) = tokio::task::spawn_blocking(move || {
        let found = recovery::recover(&r, saved);
        sampler.persist();
        (sampler, found)
    })
    .await
    .context("re-adopting containers")?;
    if found != Default::default() {
        tracing::info!(
            readopted = found.readopted,
            processes = found.processes,
            ended_while_down = found.ended,
            "containers of a previous run taken back"
        );
    }
    let gateway = Gateway::bind(&args.socket_path)?;
    tracing::info!(
        socket = args.socket_path.display().to_string().as_str(),
        trusted = trust.paths().len(),
        "gateway listening"
    );
    // Root's read-only door for users: each sees their own containers.
    let query = match &args.query_socket_path.0 {
        Some(path) => {
            let query = Query::bind(path)?;
            tracing::info!(
                socket = path.display().to_string().as_str(),
                admin_gid,
                "query socket listening"
            );
            Some(query)
        }
        None => None,
    };
    ready.store(true, Ordering::Release);
    if let Some(query) = query {
        tasks.spawn(query.serve(admin_gid, metrics.clone(), history, shutdown.clone()));
    }

    let serve = gateway.serve(trust, registry.clone(), metrics.clone(), shutdown.clone());
    tasks.spawn(serve);
    tasks.spawn(registry.clone().follow(events, shutdown.clone()));
    tasks.spawn(sampler.run(args.monitor_interval, shutdown.clone()));

    tokio::select! {
        _ = stop.cancelled() => tracing::info!("shutting down"),
        Some(res) = tasks.join_next() => {
            // A task ending on its own is a failure: stop everything and report it.
            shutdown.cancel();
            match res {
                Ok(Err(e)) => tracing::error!(error = %format!("{e:#}"), "a daemon task failed"),
                Err(e) => tracing::error!(error = %e, "a daemon task panicked"),
                Ok(Ok(())) => {}
            }
        }
    }
    shutdown.cancel();
    ready.store(false, Ordering::Release);
    // The sampler's last act saves the containers for the next start.
    while tasks.join_next().await.is_some() {}
    // The gateway removed its socket when it stopped; the programs detach when the last
    // tracker reference goes.
    drop(registry);
    tracing::info!("stopped");
    Ok(())
}

/// The kernel's maps hold every live container and every retained one at the limits.
fn tracker_limits(args: &Args) -> Limits {
    Limits {
        containers: args
            .gateway_max_containers
            .saturating_add(args.container_max_retained),
        processes: args.tracker_max_processes,
        per_container: args.container_max_processes,
    }
}

fn registry_config(args: &Args, privacy: Privacy) -> registry::Config {
    registry::Config {
        placement: args.cgroup_placement,
        parent: args.cgroup_parent.clone(),
        retention: args.container_retention,
        max_containers: args.gateway_max_containers,
        privacy: Arc::new(privacy),
        limits: registry::Limits {
            containers_per_user: args.gateway_max_containers_per_user,
            retained: args.container_max_retained,
            retained_per_user: args.container_max_retained_per_user,
            admissions_per_second: args.gateway_admission_rate_per_user,
            admission_burst: args.gateway_admission_burst_per_user,
            admission_max_wait: args.gateway_admission_max_wait,
        },
        network: args
            .collector_disable
            .enabled(crate::collectors::Collector::Network),
    }
}
