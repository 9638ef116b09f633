//! tracefs: where the tracepoints' format files are. A fresh host may not have it mounted.
use std::path::Path;

use anyhow::{Context as _, Result};
use apptheus_common::{NO_FIELD, TracepointOffsets};

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
/// task's fields from the kernel's BTF. The OOM tracepoint, the exit code and the thread group's
/// live count are optional (what needs them is left out or approximated where they are missing,
/// with a line in the log); the rest is required.
pub fn read_offsets() -> Result<TracepointOffsets> {
    let mut offsets = format::offsets(&read_format("sched", "sched_process_exit")?)?;
    match read_format("oom", "mark_victim").and_then(|f| f.require("pid", 4)) {
        Ok(at) => offsets.mark_victim_pid = at,
        Err(e) => tracing::warn!(
            error = %format!("{e:#}"),
            "no OOM kills per container on this kernel (tracepoint oom/mark_victim)"
        ),
    }
    let btf = std::fs::read(VMLINUX_BTF);
    let in_btf = |strukt, member, size| match &btf {
        Ok(data) => member_at(data, strukt, member, size),
        Err(e) => Err(anyhow::anyhow!("reading {VMLINUX_BTF}: {e}")),
    };
    // The fork hook's child is a task: where its process id and start time lie.
    offsets.task_tgid = in_btf("task_struct", "tgid", 4)?;
    offsets.task_start_time = in_btf("task_struct", "start_time", 8)?;
    match in_btf("task_struct", "exit_code", 4) {
        Ok(at) => offsets.task_exit_code = at,
        Err(e) => tracing::warn!(
            error = %format!("{e:#}"),
            "no exit codes on this kernel (task_struct.exit_code from its BTF)"
        ),
    }
    if offsets.exit_group_dead == NO_FIELD {
        // Where the tracepoint does not say whether the group died, the programs read the
        // group's count of live threads, which do_exit decrements before this tracepoint.
        let group = in_btf("task_struct", "signal", 8)
            .and_then(|signal| Ok((signal, in_btf("signal_struct", "live", 4)?)));
        match group {
            Ok((signal, live)) => (offsets.task_signal, offsets.signal_live) = (signal, live),
            Err(e) => tracing::warn!(
                error = %format!("{e:#}"),
                "a process whose main thread exits before its other threads is taken for gone \
                 on this kernel (sched_process_exit has no group_dead, and its BTF no \
                 signal_struct.live)"
            ),
        }
    }
    Ok(offsets)
}

/// The kernel's BTF: where the task's fields lie.
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The offset of `strukt.member` in the BTF `data`, which must be `size` bytes.
fn member_at(data: &[u8], strukt: &str, member: &str, size: u32) -> Result<u32> {
    let m = btf::member(data, strukt, member)
        .with_context(|| format!("parsing {VMLINUX_BTF}"))?
        .with_context(|| format!("struct {strukt} has no {member}"))?;
    if m.size != size {
        anyhow::bail!("{strukt}.{member} has size {}, expected {size}", m.size);
    }
    // A struct far larger than any task_struct means a corrupt blob; it must not read as
    // NO_FIELD (u32::MAX) either.
    if m.offset >= 1 << 16 {
        anyhow::bail!("{strukt}.{member} at offset {}, past 64 KiB", m.offset);
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
