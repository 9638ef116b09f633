//! The containers' families in the text exposition format 0.0.4.
use std::fmt::Write;

use super::{
    ContainerSeries,
    families::{GROUPS, Kind, Value},
};
use crate::collectors::Collectors;

/// The containers' families in the text exposition format 0.0.4, without those of the
/// disabled `collectors`. A family with no value for any container is left out entirely.
pub fn render(series: &[ContainerSeries], collectors: Collectors) -> String {
    let mut out = String::with_capacity(series.len() * 2200 + 1024);
    render_into(series, collectors, &mut out);
    out
}

/// `render`, written piece by piece into `out` (a compressor takes it without the whole text
/// ever being in memory: at 10,000 containers that is over 20 MB).
pub fn render_into(series: &[ContainerSeries], collectors: Collectors, out: &mut impl Write) {
    // Label sets are the same for every family of a container: escape them once.
    let labels: Vec<String> = series
        .iter()
        .map(|c| {
            format!(
                "container=\"{}\",user=\"{}\"",
                escape(&c.identity.id),
                escape(&c.identity.user)
            )
        })
        .collect();
    if !series.is_empty() {
        let _ = out.write_str("# HELP apptheus_container_info Information about a monitored container (constant 1).\n# TYPE apptheus_container_info gauge\n");
        for (c, l) in series.iter().zip(&labels) {
            let _ = writeln!(
                out,
                "apptheus_container_info{{{l},exe=\"{}\",exe_path=\"{}\",pid=\"{}\",uid=\"{}\",cgroup=\"{}\",memory_source=\"{}\",memory_peak_source=\"{}\",cpus_source=\"{}\"}} 1",
                escape(&c.identity.exe),
                escape(&c.identity.exe_path),
                c.identity.pid,
                escape(&c.identity.uid),
                escape(&c.identity.cgroup_label),
                c.memory_source,
                c.memory_peak_source.as_str(),
                c.cpus_allowed.map_or("", |a| a.source.as_str()),
            );
        }
        let _ = out.write_str("# HELP apptheus_container_job_info The batch job a container belongs to (constant 1).\n# TYPE apptheus_container_job_info gauge\n");
        for (c, l) in series.iter().zip(&labels) {
            let job = &c.identity.job;
            let _ = write!(
                out,
                "apptheus_container_job_info{{{l},scheduler=\"{}\"",
                escape(job.scheduler_label())
            );
            // Unknown values are left out (an empty label is no label).
            for (name, value) in [
                ("job_id", job.id.as_str()),
                ("job_source", job.source.map_or("", |s| s.as_str())),
                ("account", &job.account),
                ("partition", &job.partition),
                ("image", &job.image),
            ] {
                if !value.is_empty() {
                    let _ = write!(out, ",{name}=\"{}\"", escape(value));
                }
            }
            let _ = out.write_str("} 1\n");
        }
    }
    let groups = GROUPS
        .iter()
        .filter(|g| g.collector.is_none_or(|c| collectors.enabled(c)));
    for group in groups {
        for f in group.families {
            let mut header = false;
            for (c, l) in series.iter().zip(&labels) {
                let Some(v) = (f.value)(c) else { continue };
                if !header {
                    write_header(out, f.name, &f.kind, f.help);
                    header = true;
                }
                write_sample(out, f.name, l, None, v);
            }
        }
        for f in group.labeled {
            let mut header = false;
            for (c, l) in series.iter().zip(&labels) {
                (f.values)(c, &mut |value, v| {
                    if !header {
                        write_header(out, f.name, &f.kind, f.help);
                        header = true;
                    }
                    write_sample(out, f.name, l, Some((f.label, value)), v);
                });
            }
        }
    }
}

fn write_header(out: &mut impl Write, name: &str, kind: &Kind, help: &str) {
    let kind = kind.as_str();
    let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
}

/// One sample: the container's `labels`, and `extra` (a label of the family's own, whose value
/// is the daemon's: never escaped).
fn write_sample(
    out: &mut impl Write,
    name: &str,
    labels: &str,
    extra: Option<(&str, &str)>,
    v: Value,
) {
    let _ = write!(out, "{name}{{{labels}");
    if let Some((label, value)) = extra {
        let _ = write!(out, ",{label}=\"{value}\"");
    }
    let _ = match v {
        Value::Int(i) => writeln!(out, "}} {i}"),
        Value::Float(x) => writeln!(out, "}} {}", float(x)),
    };
}

/// A float as the text format wants it (Rust's Display never uses exponents; only the special
/// values need care).
fn float(x: f64) -> String {
    if x.is_nan() {
        "NaN".into()
    } else if x.is_infinite() {
        if x > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        x.to_string()
    }
}

/// Escape a label value: backslash, double quote and newline.
fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains(['\\', '"', '\n']) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        cgroup::{Cpu, Memory, MemoryEvents, Pressure, Stats, Throttling},
        container::Identity,
        tracker::ProcessCounters,
    };

    fn series(id: &str) -> ContainerSeries {
        ContainerSeries {
            identity: std::sync::Arc::new(Identity {
                id: id.into(),
                user: "alice".into(),
                exe: "starter".into(),
                exe_path: "/usr/libexec/apptainer/bin/starter".into(),
                pid: 42,
                uid: "1000".into(),
                cgroup: "/apptheus/starter_42".into(),
                cgroup_label: "/apptheus/starter_42".into(),
                start_time: 1_700_000_000.5,
                job: Default::default(),
                owner: None,
            }),
            memory_source: "cgroup",
            memory_peak_source: apptheus_api::PeakSource::Kernel,
            cpus_allowed: Some(apptheus_api::summary::CpusAllowed {
                cpus: 1.5,
                source: apptheus_api::CpusSource::Quota,
            }),
            end_time: None,
            stats: std::sync::Arc::new(Stats {
                cpu: Some(Cpu {
                    usage_seconds: Some(1.25),
                    ..Cpu::default()
                }),
                memory: Some(Memory {
                    usage_bytes: Some(4096),
                    ..Memory::default()
                }),
                ..Default::default()
            }),
            procs: ProcessCounters {
                forks: 3,
                execs: 1,
                exits: 2,
                live: 2,
                ..Default::default()
            },
            summary: None,
        }
    }

    #[test]
    fn renders_families_once_with_labels() {
        let text = render(
            &[series("starter_42"), series("weird\"id\\\n")],
            Collectors::default(),
        );
        assert_eq!(
            text.matches("# TYPE apptheus_container_cpu_usage_seconds_total counter")
                .count(),
            1
        );
        assert!(text.contains("apptheus_container_cpu_usage_seconds_total{container=\"starter_42\",user=\"alice\"} 1.25\n"));
        assert!(text.contains("container=\"weird\\\"id\\\\\\n\""));
        assert!(
            text.contains(
                "apptheus_container_processes{container=\"starter_42\",user=\"alice\"} 2\n"
            )
        );
        assert!(text.contains(
            "memory_source=\"cgroup\",memory_peak_source=\"kernel\",cpus_source=\"quota\"} 1\n"
        ));
        assert!(text.contains(
            "apptheus_container_spec_cpus{container=\"starter_42\",user=\"alice\"} 1.5\n"
        ));
        assert!(text.contains(
            "apptheus_container_job_info{container=\"starter_42\",user=\"alice\",scheduler=\"none\"} 1\n"
        ));
        // No value anywhere: no family.
        assert!(!text.contains("apptheus_container_memory_swap_bytes"));
    }

    #[test]
    fn job_labels_are_escaped_and_unknown_ones_left_out() {
        let mut c = series("c_1");
        let identity = std::sync::Arc::make_mut(&mut c.identity);
        identity.job = crate::job::Job {
            scheduler: Some(crate::job::Scheduler::Slurm),
            id: "7\"} evil 1\n".into(),
            source: Some(crate::job::JobSource::Environment),
            ..Default::default()
        };
        let text = render(&[c], Collectors::default());
        assert!(text.contains(
            "apptheus_container_job_info{container=\"c_1\",user=\"alice\",scheduler=\"slurm\",job_id=\"7\\\"} evil 1\\n\",job_source=\"environment\"} 1\n"
        ), "{text}");
    }

    /// A container on a v2 host with PSI, a CPU quota and the memory controller.
    fn held_back(id: &str) -> ContainerSeries {
        let mut c = series(id);
        std::sync::Arc::make_mut(&mut c.stats).pressure.cpu = Some(Pressure {
            waiting_seconds: 2.5,
            stalled_seconds: None,
        });
        std::sync::Arc::make_mut(&mut c.stats).pressure.memory = Some(Pressure {
            waiting_seconds: 0.25,
            stalled_seconds: Some(0.125),
        });
        std::sync::Arc::make_mut(&mut c.stats).throttling = Some(Throttling {
            periods: 30,
            throttled_periods: 28,
            throttled_seconds: 2.75,
        });
        std::sync::Arc::make_mut(&mut c.stats).memory_events = Some(MemoryEvents {
            high: None,
            max: Some(7),
            oom: Some(1),
        });
        c
    }

    #[test]
    fn what_held_a_container_back() {
        let text = render(&[held_back("c_1")], Collectors::default());
        let l = "container=\"c_1\",user=\"alice\"";
        for line in [
            format!("apptheus_container_pressure_cpu_waiting_seconds_total{{{l}}} 2.5\n"),
            format!("apptheus_container_pressure_memory_waiting_seconds_total{{{l}}} 0.25\n"),
            format!("apptheus_container_pressure_memory_stalled_seconds_total{{{l}}} 0.125\n"),
            format!("apptheus_container_cpu_cfs_periods_total{{{l}}} 30\n"),
            format!("apptheus_container_cpu_cfs_throttled_periods_total{{{l}}} 28\n"),
            format!("apptheus_container_cpu_cfs_throttled_seconds_total{{{l}}} 2.75\n"),
            "# TYPE apptheus_container_memory_events_total counter\n".to_string(),
            format!("apptheus_container_memory_events_total{{{l},event=\"max\"}} 7\n"),
            format!("apptheus_container_memory_events_total{{{l},event=\"oom\"}} 1\n"),
        ] {
            assert!(text.contains(&line), "{line} missing:\n{text}");
        }
        // What the kernel does not keep is absent, never zero.
        assert!(!text.contains("pressure_cpu_stalled"), "{text}");
        assert!(!text.contains("event=\"high\""), "{text}");
        assert!(!text.contains("pressure_io"), "{text}");
    }

    #[test]
    fn disabled_groups_are_not_rendered() {
        let all = render(&[held_back("c_1")], Collectors::default());
        let off = Collectors::disabling("pressure,throttling,memory_events,processes,io").unwrap();
        let text = render(&[held_back("c_1")], off);
        for gone in [
            "apptheus_container_pressure_",
            "apptheus_container_cpu_cfs_",
            "apptheus_container_memory_events_total",
            "apptheus_container_processes",
            "apptheus_container_forks_total",
            "apptheus_container_execs_total",
            "apptheus_container_exits_total",
        ] {
            assert!(all.contains(gone), "{gone} not rendered at all");
            assert!(
                !text.contains(gone),
                "{gone} rendered though disabled:\n{text}"
            );
        }
        // The core stays.
        assert!(text.contains("apptheus_container_cpu_usage_seconds_total{"));
        assert!(text.contains("apptheus_container_info{"));
    }

    #[test]
    fn how_a_container_ended_and_its_traffic() {
        let mut c = series("c_1");
        c.procs.exit_code = Some(137);
        c.procs.oom_kills = Some(1);
        c.procs.failed = Some(crate::tracker::Failed {
            exit_code: 1,
            signal: 2,
        });
        c.procs.network = Some(crate::tracker::Network {
            receive_bytes: 40_000_000,
            ..Default::default()
        });
        let text = render(std::slice::from_ref(&c), Collectors::default());
        assert!(
            !text.contains("apptheus_container_exit_code"),
            "only once ended"
        );
        for want in [
            "apptheus_container_oom_kills_total{container=\"c_1\",user=\"alice\"} 1\n",
            "apptheus_container_failed_exits_total{container=\"c_1\",user=\"alice\",reason=\"exit_code\"} 1\n",
            "apptheus_container_failed_exits_total{container=\"c_1\",user=\"alice\",reason=\"signal\"} 2\n",
            "apptheus_container_network_receive_bytes_total{container=\"c_1\",user=\"alice\"} 40000000\n",
        ] {
            assert!(text.contains(want), "{want}");
        }
        c.end_time = Some(1.0);
        let text = render(&[c], Collectors::default());
        assert!(
            text.contains("apptheus_container_exit_code{container=\"c_1\",user=\"alice\"} 137\n")
        );
        // No value anywhere: no family.
        let text = render(&[series("c_2")], Collectors::default());
        for absent in ["oom_kills", "failed_exits", "network", "exit_code"] {
            assert!(!text.contains(absent), "{absent}");
        }
    }

    #[test]
    fn empty_snapshot_renders_nothing() {
        assert_eq!(render(&[], Collectors::default()), "");
    }
}
