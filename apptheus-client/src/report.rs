//! A container's efficiency report: its figures against what it was allowed, and notes in plain
//! words, each with the numbers that triggered it. The same report for `apptheus-report`,
//! `apptheus-exec --report`, and a job's containers read from a summary file.
use apptheus_api::{Container, CpusSource, State, Summary, format};
use serde::Serialize;

use crate::terminal::safe;

/// When a note is written. Each is a flag of `apptheus-report` (docs/glance.md, docs/users.md).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    /// CPU efficiency below this (0..1) is low.
    pub cpu_efficiency: f64,
    /// A memory peak below this fraction of the limit is far below it.
    pub memory_fraction: f64,
    /// Throttled in more than this fraction of its CFS periods.
    pub throttled_fraction: f64,
    /// Stalled on memory or I/O (all its tasks at once) for more than this fraction of its
    /// wall time.
    pub stall_fraction: f64,
    /// No CPU used for at least this long (seconds) at the end of its life (or so far).
    pub idle_seconds: f64,
    /// Containers shorter than this get no efficiency notes: too short to judge.
    pub min_wall_seconds: f64,
}

impl Default for Thresholds {
    fn default() -> Thresholds {
        Thresholds {
            cpu_efficiency: 0.75,
            memory_fraction: 0.25,
            throttled_fraction: 0.2,
            stall_fraction: 0.1,
            idle_seconds: 300.0,
            min_wall_seconds: 1.0,
        }
    }
}

/// What a note is about (its `kind` in `--json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoteKind {
    LowCpuEfficiency,
    MemoryFarBelowLimit,
    OomKilled,
    Throttled,
    MemoryStalls,
    IoStalls,
    Idle,
    Failed,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Note {
    pub kind: NoteKind,
    pub text: String,
}

/// One container's figures: from its summary once it ended, from its live values before.
/// A figure the daemon does not have on this host is `None`, never 0.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Figures {
    pub container: String,
    pub user: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_scheduler: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    pub state: State,
    /// Unix time it started.
    pub start_seconds: f64,
    pub wall_seconds: f64,
    pub cpu_seconds: Option<f64>,
    pub cpus_allowed: Option<f64>,
    pub cpus_allowed_source: Option<CpusSource>,
    pub cpu_efficiency: Option<f64>,
    pub memory_peak_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    pub oom_kills: Option<u64>,
    pub exit_code: Option<u32>,
    pub failed_exits: Option<u64>,
    pub throttled_periods: Option<u64>,
    pub periods: Option<u64>,
    pub throttled_seconds: Option<f64>,
    pub cpu_waiting_seconds: Option<f64>,
    pub memory_stalled_seconds: Option<f64>,
    pub io_stalled_seconds: Option<f64>,
    pub io_read_bytes: Option<u64>,
    pub io_write_bytes: Option<u64>,
    pub network_receive_bytes: Option<u64>,
    pub network_transmit_bytes: Option<u64>,
    /// Seconds at the end of its life (or until now) in which it used no CPU, where the
    /// daemon's history shows it.
    pub idle_seconds: Option<f64>,
    pub notes: Vec<Note>,
}

fn known(v: &str) -> Option<String> {
    (!v.is_empty() && v != "none").then(|| v.to_string())
}

impl Figures {
    /// A container's figures with nothing known but who and how long.
    pub fn bare(
        container: &str,
        user: &str,
        state: State,
        start_seconds: f64,
        wall_seconds: f64,
    ) -> Figures {
        Figures {
            container: container.to_string(),
            user: user.to_string(),
            job_scheduler: None,
            job_id: None,
            state,
            start_seconds,
            wall_seconds,
            cpu_seconds: None,
            cpus_allowed: None,
            cpus_allowed_source: None,
            cpu_efficiency: None,
            memory_peak_bytes: None,
            memory_limit_bytes: None,
            oom_kills: None,
            exit_code: None,
            failed_exits: None,
            throttled_periods: None,
            periods: None,
            throttled_seconds: None,
            cpu_waiting_seconds: None,
            memory_stalled_seconds: None,
            io_stalled_seconds: None,
            io_read_bytes: None,
            io_write_bytes: None,
            network_receive_bytes: None,
            network_transmit_bytes: None,
            idle_seconds: None,
            notes: Vec::new(),
        }
    }

    /// From an ended container's summary record.
    pub fn of_summary(s: &Summary) -> Figures {
        Figures {
            container: s.container.clone(),
            user: s.user.clone(),
            job_scheduler: known(&s.job_scheduler),
            job_id: s.job_id.clone(),
            state: State::Ended,
            start_seconds: s.start_time_seconds,
            wall_seconds: s.duration_seconds,
            cpu_seconds: s.cpu_seconds,
            cpus_allowed: Some(s.cpus_allowed),
            cpus_allowed_source: Some(s.cpus_allowed_source),
            cpu_efficiency: s.cpu_efficiency,
            memory_peak_bytes: s.memory_peak_bytes,
            memory_limit_bytes: s.memory_limit_bytes,
            oom_kills: s.oom_kills,
            exit_code: s.exit_code,
            failed_exits: s.failed_exits,
            throttled_periods: s.cpu_cfs_throttled_periods,
            periods: s.cpu_cfs_periods,
            throttled_seconds: s.cpu_cfs_throttled_seconds,
            cpu_waiting_seconds: s.pressure_cpu_waiting_seconds,
            memory_stalled_seconds: s.pressure_memory_stalled_seconds,
            io_stalled_seconds: s.pressure_io_stalled_seconds,
            io_read_bytes: s.io_read_bytes,
            io_write_bytes: s.io_write_bytes,
            network_receive_bytes: s.network_receive_bytes,
            network_transmit_bytes: s.network_transmit_bytes,
            idle_seconds: None,
            notes: Vec::new(),
        }
    }

    /// From the daemon's answer: the summary when it has one, the live values otherwise;
    /// `now` (the answer's time) ends a live container's wall time; `step` is the seconds
    /// between two points of its history.
    pub fn of_container(c: &Container, now: f64, step: f64) -> Figures {
        let mut f = match &c.summary {
            Some(s) => Figures::of_summary(s),
            None => Figures {
                job_scheduler: c.scheduler.clone(),
                job_id: c.job_id.clone(),
                cpu_seconds: c.cpu_seconds,
                memory_peak_bytes: c.memory_peak_bytes,
                memory_limit_bytes: c.memory_limit_bytes,
                exit_code: c.exit_code,
                ..Figures::bare(
                    &c.id,
                    &c.user,
                    c.state,
                    c.start_time,
                    (c.end_time.unwrap_or(now) - c.start_time).max(0.0),
                )
            },
        };
        f.idle_seconds = idle_tail(c).map(|points| points as f64 * step);
        f
    }

    /// The notes these figures call for, under `t`.
    pub fn with_notes(mut self, t: &Thresholds) -> Figures {
        self.notes = notes(&self, t);
        self
    }
}

/// How many of the newest points of the container's history show no CPU, where it has
/// points.
fn idle_tail(c: &Container) -> Option<usize> {
    let points = &c.history.as_ref()?.cpu_cores;
    if points.is_empty() {
        return None;
    }
    Some(
        points
            .iter()
            .rev()
            .take_while(|p| p.is_some_and(|cores| cores < 0.005))
            .count(),
    )
}

/// The request to suggest for a memory peak: 20% above it, rounded up to a step that reads
/// well in a job script (64 MiB below 1 GiB, 256 MiB below 8 GiB, 1 GiB above).
pub fn suggested_memory(peak: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    let want = peak.saturating_add(peak / 5).max(64 * MIB);
    let step = match want {
        w if w < 1024 * MIB => 64 * MIB,
        w if w < 8192 * MIB => 256 * MIB,
        _ => 1024 * MIB,
    };
    want.div_ceil(step).saturating_mul(step)
}

/// Memory as a job script asks for it (`--mem=`): whole MiB below 1 GiB, else GiB.
fn request(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    if bytes < 1024 * MIB || !bytes.is_multiple_of(1024 * MIB) {
        format!("{}M", bytes.div_ceil(MIB))
    } else {
        format!("{}G", bytes / (1024 * MIB))
    }
}

fn percent(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

fn notes(f: &Figures, t: &Thresholds) -> Vec<Note> {
    let mut notes = Vec::new();
    let mut note = |kind, text: String| notes.push(Note { kind, text });
    let judged = f.wall_seconds >= t.min_wall_seconds;
    if let (Some(oom), true) = (f.oom_kills, f.oom_kills.unwrap_or(0) > 0) {
        let limit = match (f.memory_peak_bytes, f.memory_limit_bytes) {
            (Some(peak), Some(limit)) if peak as f64 >= 0.9 * limit as f64 => format!(
                ": its peak reached the {} limit; ask for more memory (e.g. --mem={})",
                format::bytes(limit),
                request(suggested_memory(limit.saturating_mul(2)))
            ),
            (_, Some(limit)) => format!(
                " (its limit: {}; the kill may have come from a limit above it)",
                format::bytes(limit)
            ),
            _ => String::new(),
        };
        note(
            NoteKind::OomKilled,
            format!(
                "{oom} process{} killed by the kernel for lack of memory{limit}",
                if oom == 1 { " was" } else { "es were" }
            ),
        );
    }
    if let Some(code) = f.exit_code.filter(|c| *c != 0) {
        let how = if code > 128 && code < 128 + 65 {
            format!("was killed by signal {} (exit status {code})", code - 128)
        } else {
            format!("ended with exit status {code}")
        };
        note(NoteKind::Failed, format!("it {how}"));
    }
    if let (true, Some(cpu), Some(allowed)) = (judged, f.cpu_seconds, f.cpus_allowed)
        && f.wall_seconds > 0.0
        && allowed > 0.0
    {
        let used = cpu / f.wall_seconds;
        let efficiency = used / allowed;
        let ask = used.ceil().max(1.0);
        // Only where fewer CPUs would do: a job on one CPU that waits gets the idle note.
        if efficiency < t.cpu_efficiency && ask < allowed {
            let ask_text = format!("ask for {ask:.0}");
            note(
                NoteKind::LowCpuEfficiency,
                format!(
                    "used {used:.1} of {allowed} CPUs allowed ({} efficiency): {ask_text}",
                    percent(efficiency),
                    allowed = trim(allowed),
                ),
            );
        }
    }
    if let (true, Some(peak), Some(limit), None | Some(0)) = (
        judged,
        f.memory_peak_bytes,
        f.memory_limit_bytes,
        f.oom_kills,
    ) && limit > 0
        && (peak as f64) < t.memory_fraction * limit as f64
    {
        let ask = suggested_memory(peak);
        if ask < limit {
            note(
                NoteKind::MemoryFarBelowLimit,
                format!(
                    "memory peaked at {} of its {} limit ({}): ask for {} (e.g. --mem={})",
                    format::bytes(peak),
                    format::bytes(limit),
                    percent(peak as f64 / limit as f64),
                    format::bytes(ask),
                    request(ask)
                ),
            );
        }
    }
    if let (Some(throttled), Some(periods)) = (f.throttled_periods, f.periods)
        && periods > 0
        && throttled as f64 > t.throttled_fraction * periods as f64
    {
        note(
            NoteKind::Throttled,
            format!(
                "throttled in {} of its CPU periods ({} held back): it wanted more CPU than its quota allows; ask for more CPUs or use fewer threads",
                percent(throttled as f64 / periods as f64),
                format::cpu_time(f.throttled_seconds.unwrap_or(0.0))
            ),
        );
    }
    let stall = |secs: Option<f64>| {
        secs.filter(|s| judged && f.wall_seconds > 0.0 && *s > t.stall_fraction * f.wall_seconds)
    };
    if let Some(s) = stall(f.memory_stalled_seconds) {
        note(
            NoteKind::MemoryStalls,
            format!(
                "stalled on memory for {} ({} of its time): it was reclaiming or swapping near its limit; ask for more memory",
                format::cpu_time(s),
                percent(s / f.wall_seconds)
            ),
        );
    }
    if let Some(s) = stall(f.io_stalled_seconds) {
        note(
            NoteKind::IoStalls,
            format!(
                "stalled on I/O for {} ({} of its time): read or write less, or use node-local storage",
                format::cpu_time(s),
                percent(s / f.wall_seconds)
            ),
        );
    }
    // The history's tail says how long it used no CPU at its end; a container that used
    // next to none all its life (less than 5% of one CPU: its start) was idle all along.
    let hardly = f
        .cpu_seconds
        .filter(|cpu| f.wall_seconds > 0.0 && *cpu < IDLE_SHARE * f.wall_seconds);
    let tail = f.idle_seconds.filter(|i| *i >= t.idle_seconds && *i > 0.0);
    if let Some(cpu) = hardly.filter(|_| f.wall_seconds >= t.idle_seconds) {
        note(
            NoteKind::Idle,
            format!(
                "used almost no CPU all its life ({} in {}): a job that waits ends sooner, or holds its node for nothing",
                format::cpu_time(cpu),
                format::cpu_time(f.wall_seconds)
            ),
        );
    } else if let Some(idle) = tail {
        note(
            NoteKind::Idle,
            format!(
                "used no CPU for its last {}: a job that waits ends sooner, or holds its node for nothing",
                format::duration(idle)
            ),
        );
    }
    notes
}

/// Below this share of one CPU over its whole life, a container was idle (what it used was
/// its start).
const IDLE_SHARE: f64 = 0.05;

/// `2`, `0.5`: a CPU count without a useless fraction.
fn trim(x: f64) -> String {
    if (x - x.round()).abs() < 1e-9 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

/// How the text is written: with colour (a terminal) or not.
#[derive(Clone, Copy, Debug)]
pub struct Style {
    pub colour: bool,
}

impl Style {
    fn paint(self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
}

fn or_none<T>(v: Option<T>, f: impl FnOnce(T) -> String) -> String {
    v.map_or_else(|| format::NONE.to_string(), f)
}

/// The text of one container's report.
pub fn text(f: &Figures, style: Style) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let job = match (&f.job_scheduler, &f.job_id) {
        (Some(s), Some(id)) => format!("   job {} ({})", safe(id), safe(s)),
        (None, Some(id)) => format!("   job {}", safe(id)),
        _ => String::new(),
    };
    let state = match (f.state, f.exit_code) {
        (State::Live, _) => "running".to_string(),
        (State::Ended, Some(code)) => format!("ended, exit status {code}"),
        (State::Ended, None) => "ended".to_string(),
    };
    let _ = writeln!(
        out,
        "{}   user {}{job}   {state}",
        style.paint("1", &safe(&f.container)),
        safe(&f.user)
    );
    let mut row = |name: &str, value: String| {
        let _ = writeln!(out, "  {name:<17} {value}");
    };
    row("Wall time", format::cpu_time(f.wall_seconds));
    let efficiency = match (f.cpu_efficiency, f.cpus_allowed, f.cpus_allowed_source) {
        (Some(e), Some(n), Some(src)) => format!(
            "   {} of {} CPU{} allowed ({})",
            percent(e),
            trim(n),
            if (n - 1.0).abs() < 1e-9 { "" } else { "s" },
            src.as_str()
        ),
        _ => String::new(),
    };
    row(
        "CPU time",
        format!("{}{efficiency}", or_none(f.cpu_seconds, format::cpu_time)),
    );
    let limit = match (f.memory_peak_bytes, f.memory_limit_bytes) {
        (Some(p), Some(l)) if l > 0 => format!(
            " of {} limit ({})",
            format::bytes(l),
            percent(p as f64 / l as f64)
        ),
        (_, None) => " (no limit)".to_string(),
        _ => String::new(),
    };
    row(
        "Memory peak",
        format!("{}{limit}", or_none(f.memory_peak_bytes, format::bytes)),
    );
    row("OOM kills", or_none(f.oom_kills, |n| n.to_string()));
    row("Failed exits", or_none(f.failed_exits, |n| n.to_string()));
    row(
        "Throttled",
        match (f.throttled_seconds, f.throttled_periods, f.periods) {
            (_, _, Some(0)) => "never (no CPU quota)".to_string(),
            (Some(s), Some(t), Some(p)) => {
                format!("{} ({t} of {p} periods)", format::cpu_time(s))
            }
            _ => format::NONE.to_string(),
        },
    );
    let stalls = [
        ("cpu waiting", f.cpu_waiting_seconds),
        ("memory", f.memory_stalled_seconds),
        ("io", f.io_stalled_seconds),
    ]
    .iter()
    .filter_map(|(n, v)| v.map(|v| format!("{n} {}", format::cpu_time(v))))
    .collect::<Vec<_>>();
    row(
        "Pressure stalls",
        if stalls.is_empty() {
            format::NONE.to_string()
        } else {
            stalls.join(", ")
        },
    );
    row(
        "Block I/O",
        match (f.io_read_bytes, f.io_write_bytes) {
            (None, None) => format::NONE.to_string(),
            (r, w) => format!(
                "read {}, written {}",
                or_none(r, format::bytes),
                or_none(w, format::bytes)
            ),
        },
    );
    row(
        "Network",
        match (f.network_receive_bytes, f.network_transmit_bytes) {
            (None, None) => format::NONE.to_string(),
            (r, t) => format!(
                "received {}, sent {}",
                or_none(r, format::bytes),
                or_none(t, format::bytes)
            ),
        },
    );
    if f.notes.is_empty() {
        let _ = writeln!(
            out,
            "  {}",
            style.paint("32", "No notes: it used what it asked for.")
        );
    } else {
        let _ = writeln!(out, "  Notes:");
        for n in &f.notes {
            let colour = match n.kind {
                NoteKind::OomKilled | NoteKind::Failed => "31",
                _ => "33",
            };
            let _ = writeln!(out, "  {} {}", style.paint(colour, "*"), n.text);
        }
    }
    out
}

/// A job's containers on this node, summed: its CPU time, the span of its containers, the
/// largest peak.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobTotal {
    pub job_id: String,
    pub containers: usize,
    pub cpu_seconds: f64,
    pub memory_peak_bytes: Option<u64>,
    pub oom_kills: u64,
    pub failed: usize,
}

pub fn job_total(job_id: &str, figures: &[Figures]) -> JobTotal {
    JobTotal {
        job_id: job_id.to_string(),
        containers: figures.len(),
        cpu_seconds: figures.iter().filter_map(|f| f.cpu_seconds).sum(),
        memory_peak_bytes: figures.iter().filter_map(|f| f.memory_peak_bytes).max(),
        oom_kills: figures.iter().filter_map(|f| f.oom_kills).sum(),
        failed: figures
            .iter()
            .filter(|f| f.exit_code.is_some_and(|c| c != 0))
            .count(),
    }
}

/// The job's total line; `place` says where its containers ran ("this node", "node n1").
pub fn job_text(t: &JobTotal, style: Style, place: &str) -> String {
    format!(
        "{}: {} container{} on {}, CPU time {}, largest peak {}, {} OOM kill{}, {} failed\n",
        style.paint("1", &format!("Job {}", safe(&t.job_id))),
        t.containers,
        if t.containers == 1 { "" } else { "s" },
        safe(place),
        format::cpu_time(t.cpu_seconds),
        or_none(t.memory_peak_bytes, format::bytes),
        t.oom_kills,
        if t.oom_kills == 1 { "" } else { "s" },
        t.failed
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn ended(cpu: f64, wall: f64, allowed: f64) -> Figures {
        Figures {
            cpu_seconds: Some(cpu),
            cpus_allowed: Some(allowed),
            cpus_allowed_source: Some(CpusSource::Cpuset),
            cpu_efficiency: Some(cpu / wall / allowed),
            memory_peak_bytes: Some(200 * MIB),
            memory_limit_bytes: Some(1024 * MIB),
            oom_kills: Some(0),
            exit_code: Some(0),
            failed_exits: Some(0),
            ..Figures::bare("apptheus-exec_7", "alice", State::Ended, 1.7e9, wall)
        }
    }

    fn kinds(f: Figures) -> Vec<NoteKind> {
        f.with_notes(&Thresholds::default())
            .notes
            .iter()
            .map(|n| n.kind)
            .collect()
    }

    #[test]
    fn a_single_thread_on_sixteen_cpus_is_told_to_ask_for_one() {
        let f = ended(8.0, 20.0, 16.0).with_notes(&Thresholds::default());
        let note = &f.notes[0];
        assert_eq!(note.kind, NoteKind::LowCpuEfficiency);
        assert_eq!(
            note.text,
            "used 0.4 of 16 CPUs allowed (2% efficiency): ask for 1"
        );
    }

    #[test]
    fn memory_far_below_its_limit_gets_a_request_above_its_peak() {
        let f = ended(2.0, 2.0, 1.0).with_notes(&Thresholds::default());
        let note = f
            .notes
            .iter()
            .find(|n| n.kind == NoteKind::MemoryFarBelowLimit)
            .unwrap();
        assert!(
            note.text.contains("ask for 256 MiB (e.g. --mem=256M)"),
            "{}",
            note.text
        );
        for peak in [1, 64 * MIB, 200 * MIB, 1000 * MIB, 5 << 30, 100 << 30] {
            assert!(suggested_memory(peak) >= peak, "{peak}");
        }
    }

    #[test]
    fn an_oom_kill_at_the_limit_says_so() {
        let mut f = ended(1.0, 1.0, 1.0);
        f.oom_kills = Some(1);
        f.exit_code = Some(137);
        f.memory_peak_bytes = Some(64 * MIB);
        f.memory_limit_bytes = Some(64 * MIB);
        let f = f.with_notes(&Thresholds::default());
        assert_eq!(f.notes[0].kind, NoteKind::OomKilled);
        assert!(
            f.notes[0].text.contains("reached the 64.0 MiB limit"),
            "{}",
            f.notes[0].text
        );
        assert!(f.notes[1].text.contains("killed by signal 9"));
        // No "far below" note for a container that ran out.
        assert!(!kinds(f.clone()).contains(&NoteKind::MemoryFarBelowLimit));
    }

    #[test]
    fn an_idle_container_is_told() {
        let mut f = ended(0.0, 600.0, 1.0);
        f.memory_limit_bytes = None;
        assert_eq!(kinds(f), [NoteKind::Idle]);
    }

    #[test]
    fn a_busy_container_gets_no_note() {
        let mut f = ended(39.0, 20.0, 2.0);
        f.memory_peak_bytes = Some(900 * MIB);
        assert_eq!(kinds(f), []);
    }

    #[test]
    fn user_values_cannot_reach_the_terminal() {
        let mut f = ended(1.0, 1.0, 1.0);
        f.container = "x\u{1b}[2J".into();
        f.job_id = Some("1\u{7}".into());
        let text = text(&f, Style { colour: false });
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
    }
}
