//! The daemon: one task per concern (HTTP, gateway, tracker events, sampler), stopped together
//! through one cancellation token on SIGINT/SIGTERM.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use anyhow::{Context as _, Result};
use tokio::{net::UnixStream, sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{
    cgroup::{Layout, Placement},
    cli::{self, Args},
    gateway::{self, Gateway, Trust},
    http,
    metrics::Metrics,
    registry::{self, Registry},
    state::StateDir,
    tracker::{EventStream, Tracker},
    webconfig::Web,
};

/// Connections being identified at once; more wait in the kernel's listen backlog, so a flood
/// costs bounded memory.
const MAX_PENDING_CONNECTIONS: usize = 16;

/// Run the daemon; `web` is the loaded `--web.config.file`, if given.
pub async fn run(args: Args, trust: Trust, web: Option<Web>) -> Result<()> {
    let shutdown = CancellationToken::new();
    let metrics = Arc::new(Metrics::new().context("setting up metrics")?);
    let ready = Arc::new(AtomicBool::new(false));
    let mut tasks = JoinSet::new();

    // HTTP first, so /-/healthy answers and /-/ready says 503 while the rest starts.
    let addrs = args
        .web_listen_address
        .to_socket_addrs()
        .with_context(|| format!("resolving --web.listen-address {}", args.web_listen_address))?;
    let listener = tokio::net::TcpListener::bind(&addrs[..])
        .await
        .with_context(|| {
            format!(
                "listening on --web.listen-address {}",
                args.web_listen_address
            )
        })?;
    tracing::info!(
        address = listener.local_addr()?.to_string().as_str(),
        path = args.web_telemetry_path.as_str(),
        tls = web.as_ref().is_some_and(|w| w.tls.is_some()),
        basic_auth = web.as_ref().is_some_and(|w| !w.config.users.is_empty()),
        "HTTP server listening"
    );
    let app = http::router(
        &args.web_telemetry_path,
        http::AppState::new(metrics.clone(), ready.clone()),
        web.as_ref(),
    );
    tasks.spawn(http::serve(
        listener,
        app,
        http::ServeOptions::new(web.as_ref()),
        shutdown.clone(),
    ));

    // Before anything is created: a second daemon on the same state must not start.
    let state_dir = StateDir::open(&args.state_dir)?;
    let saved = state_dir.load();
    let (tracker, events) = Tracker::load()?;
    let tracker = Arc::new(tracker);
    let layout = Layout::detect().context("detecting the cgroup hierarchies")?;
    tracing::info!(
        mode = format!("{:?}", layout.mode()).as_str(),
        "cgroup layout detected"
    );
    let registry = Arc::new(Registry::new(
        registry::Config {
            placement: match args.cgroup_placement {
                cli::Placement::Nested => Placement::Nested,
                cli::Placement::Dedicated => Placement::Dedicated,
            },
            parent: args.cgroup_parent.clone(),
            retention: args.container_retention,
            max_containers: args.gateway_max_containers,
        },
        layout,
        tracker.clone(),
        Some(state_dir),
    ));
    // Containers a previous run left (a crash, an upgrade) are taken back before any launcher
    // is admitted, so that none of their processes can be mistaken for a new container's.
    let r = registry.clone();
    let recovery = tokio::task::spawn_blocking(move || {
        let recovery = r.recover(saved);
        r.persist();
        recovery
    })
    .await
    .context("re-adopting containers")?;
    if recovery != Default::default() {
        tracing::info!(
            readopted = recovery.readopted,
            processes = recovery.processes,
            ended_while_down = recovery.ended,
            "containers of a previous run taken back"
        );
    }
    let gateway = Arc::new(Gateway::bind(&args.socket_path)?);
    tracing::info!(
        socket = args.socket_path.display().to_string().as_str(),
        trusted = trust.paths().len(),
        "gateway listening"
    );
    ready.store(true, Ordering::Release);

    tasks.spawn(accept_loop(
        gateway.clone(),
        trust,
        registry.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(event_loop(events, registry.clone(), shutdown.clone()));
    tasks.spawn(sample_loop(
        registry.clone(),
        metrics.clone(),
        args.monitor_interval,
        shutdown.clone(),
    ));

    tokio::select! {
        _ = wait_for_signal() => tracing::info!("shutting down"),
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
    while tasks.join_next().await.is_some() {}
    // Removes the socket file.
    drop(gateway);
    // Connection tasks may still hold the registry; its cleanup does not need sole ownership.
    registry.shutdown();
    // The programs detach when the last tracker reference goes (at the latest, at exit).
    drop(registry);
    drop(tracker);
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

async fn accept_loop(
    gateway: Arc<Gateway>,
    trust: Trust,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<()> {
    let trust = Arc::new(trust);
    let pending = Arc::new(Semaphore::new(MAX_PENDING_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            p = pending.clone().acquire_owned() => p?,
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            s = gateway.accept() => match s {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and the like: log, back off briefly, keep serving.
                    tracing::warn!(error = %e, "accepting a launcher connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (trust, registry, metrics, shutdown) = (
            trust.clone(),
            registry.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            let admitted = admit(stream, trust, registry.clone(), metrics).await;
            drop(permit);
            if let Some((stream, key)) = admitted {
                hold(stream, key, registry, shutdown).await;
            }
        });
    }
}

/// Identify and admit one connection; the stream and container key when accepted.
async fn admit(
    stream: UnixStream,
    trust: Arc<Trust>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
) -> Option<(UnixStream, u64)> {
    let res = tokio::task::spawn_blocking(move || {
        let res = gateway::identify(&stream, &trust).and_then(|peer| match registry.admit(&peer) {
            Ok((key, id)) => Ok((peer, key, id)),
            Err(r) => Err((r, Some(peer))),
        });
        (stream, res)
    })
    .await;
    let Ok((stream, res)) = res else {
        return None;
    };
    match res {
        Ok((peer, key, id)) => {
            metrics.accepted();
            tracing::info!(
                container = id.as_str(),
                pid = peer.pid,
                uid = peer.uid,
                "launcher connection accepted"
            );
            Some((stream, key))
        }
        Err((reason, peer)) => {
            metrics.rejected(reason);
            let (pid, uid, exe) = peer.map_or((0, u32::MAX, String::new()), |p| {
                (p.pid, p.uid, p.exe_path.to_string_lossy().into_owned())
            });
            tracing::warn!(
                reason = reason.as_str(),
                pid = pid,
                uid = uid,
                exe = exe.as_str(),
                "launcher connection refused"
            );
            // Dropping the stream closes the connection at once.
            None
        }
    }
}

/// Hold an accepted launcher's connection until it closes (or the daemon stops).
async fn hold(stream: UnixStream, key: u64, registry: Arc<Registry>, shutdown: CancellationToken) {
    use tokio::io::AsyncReadExt as _;
    let mut stream = stream;
    let mut buf = [0u8; 256];
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            n = stream.read(&mut buf) => match n {
                // Launchers send nothing; whatever they send is ignored.
                Ok(n) if n > 0 => continue,
                _ => break,
            },
        }
    }
    registry.disconnected(key);
}

async fn event_loop(
    mut events: EventStream,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) -> Result<()> {
    let mut batch = Vec::with_capacity(256);
    loop {
        batch.clear();
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = events.next_batch(&mut batch) => r.context("reading tracker events")?,
        }
        let moves = registry.on_events(&batch);
        if !moves.is_empty() {
            let r = registry.clone();
            // cgroup writes are file I/O: off the async workers.
            let _ = tokio::task::spawn_blocking(move || r.apply_moves(moves)).await;
        }
    }
}

async fn sample_loop(
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    interval: std::time::Duration,
    shutdown: CancellationToken,
) -> Result<()> {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // A new container is sampled and shown at once, not at the next tick (admissions in a
        // burst share one such pass).
        let only_new = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => false,
            _ = registry.admitted() => true,
        };
        let (r, m) = (registry.clone(), metrics.clone());
        // One pass: reads of cgroup files, all on a blocking thread.
        let pass = tokio::task::spawn_blocking(move || {
            let start = Instant::now();
            let targets = r.targets(only_new);
            let samples = r.sample(&targets);
            r.record(samples);
            if let Some(series) = r.changed_series() {
                m.publish(series);
            }
            m.containers.set(r.live() as i64);
            if only_new {
                return;
            }
            if let Ok(lost) = r.tracker().lost_events() {
                m.set_events_lost(lost);
            }
            m.sample_duration.observe(start.elapsed().as_secs_f64());
            r.reap();
            r.persist();
        });
        pass.await.context("sampling pass")?;
    }
}
