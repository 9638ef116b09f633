//! tracefs: where the tracepoints' format files are. A fresh host may not have it mounted.
use std::path::Path;

use anyhow::{Context as _, Result};
use apptheus_common::TracepointOffsets;

use super::format;

pub const TRACEFS: &str = "/sys/kernel/tracing";

/// Mount tracefs at /sys/kernel/tracing unless it is there already. Returns whether it mounted.
pub fn ensure_tracefs() -> Result<bool> {
    if Path::new(TRACEFS).join("events").is_dir() {
        return Ok(false);
    }
    nix::mount::mount(
        Some("tracefs"),
        TRACEFS,
        Some("tracefs"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .with_context(|| format!("tracefs is not mounted and mounting it at {TRACEFS} failed"))?;
    tracing::info!(
        path = TRACEFS,
        "mounted tracefs (the tracepoints' formats and ids live there)"
    );
    Ok(true)
}

fn read_format(category: &str, event: &str) -> Result<format::Format> {
    let path = Path::new(TRACEFS)
        .join("events")
        .join(category)
        .join(event)
        .join("format");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    format::parse(&text).with_context(|| format!("parsing {}", path.display()))
}

/// This kernel's field offsets for the programs.
pub fn read_offsets() -> Result<TracepointOffsets> {
    format::offsets(
        &read_format("task", "task_newtask")?,
        &read_format("sched", "sched_process_exit")?,
    )
}
