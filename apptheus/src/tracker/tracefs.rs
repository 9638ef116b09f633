//! tracefs: where the tracepoints' format files are. A fresh host may not have it mounted.
use std::path::Path;

use anyhow::{Context as _, Result};
use apptheus_common::TracepointOffsets;

use super::{btf, format};

pub const TRACEFS: &str = "/sys/kernel/tracing";

/// Mount tracefs at /sys/kernel/tracing unless it is there already. Returns whether it mounted.
pub fn ensure_tracefs() -> Result<bool> {
    if mounted() {
        return Ok(false);
    }
    mount_tracefs()
}

fn mounted() -> bool {
    Path::new(TRACEFS).join("events").is_dir()
}

/// Mount tracefs at `TRACEFS`. The kernel refuses the same filesystem twice on one mount point
/// (EBUSY): whoever mounted it since `mounted()` looked (a daemon starting beside this one, the
/// host's mount unit at boot) did this step first, and that is success.
fn mount_tracefs() -> Result<bool> {
    match nix::mount::mount(
        Some("tracefs"),
        TRACEFS,
        Some("tracefs"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        None::<&str>,
    ) {
        Ok(()) => {
            tracing::info!(
                path = TRACEFS,
                "mounted tracefs (the tracepoints' formats and ids live there)"
            );
            Ok(true)
        }
        Err(nix::errno::Errno::EBUSY) if mounted() => Ok(false),
        Err(e) => Err(e)
            .with_context(|| format!("tracefs is not mounted and mounting it at {TRACEFS} failed")),
    }
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

/// This kernel's field offsets for the programs: the tracepoints' from their format files, the
/// exit code's from the kernel's BTF. The OOM tracepoint and the exit code are optional (their
/// metrics are left out where they are missing, with a line in the log); the rest is required.
pub fn read_offsets() -> Result<TracepointOffsets> {
    let mut offsets = format::offsets(
        &read_format("task", "task_newtask")?,
        &read_format("sched", "sched_process_exit")?,
    )?;
    match read_format("oom", "mark_victim").and_then(|f| f.require("pid", 4)) {
        Ok(at) => offsets.mark_victim_pid = at,
        Err(e) => tracing::warn!(
            error = %format!("{e:#}"),
            "no OOM kills per container on this kernel (tracepoint oom/mark_victim)"
        ),
    }
    match exit_code_offset() {
        Ok(at) => offsets.task_exit_code = at,
        Err(e) => tracing::warn!(
            error = %format!("{e:#}"),
            "no exit codes on this kernel (task_struct.exit_code from its BTF)"
        ),
    }
    Ok(offsets)
}

/// The kernel's BTF: where `struct task_struct`'s `exit_code` lies.
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

fn exit_code_offset() -> Result<u32> {
    let data = std::fs::read(VMLINUX_BTF).with_context(|| format!("reading {VMLINUX_BTF}"))?;
    let m = btf::member(&data, "task_struct", "exit_code")
        .with_context(|| format!("parsing {VMLINUX_BTF}"))?
        .context("struct task_struct has no exit_code")?;
    if m.size != 4 {
        anyhow::bail!("task_struct.exit_code has size {}, expected 4", m.size);
    }
    Ok(m.offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The race of two daemons starting on a fresh host, made certain: this one found tracefs
    /// missing, the other mounted it, then this one mounts.
    #[test]
    fn a_mount_someone_else_did_first_is_success() {
        ensure_tracefs().unwrap();
        assert!(mounted());
        assert!(!mount_tracefs().unwrap());
    }
}
