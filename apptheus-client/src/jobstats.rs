//! A job's summary in the format of Princeton's jobstats: the record its `slurmctld` epilog keeps
//! in the job's `AdminComment` (`JS1:` then base64 of the gzip of a JSON document), which its
//! `jobstats` command, Job Defense Shield and their pandas recipes read back.
//!
//! The document, as jobstats.py writes it: `nodes`, one entry per node keyed by its host name,
//! each with `cpus` (the CPUs allocated there), `total_memory` (the memory allocated, bytes),
//! `used_memory` (the peak used, bytes) and `total_time` (the CPU seconds used there, to the
//! millisecond: jobstats' own writer keeps one decimal, which a short job's CPU time does not
//! survive; its readers take any float); top level `total_time` (the job's run time in seconds: here from its first
//! container's start to its last one's end) and `gpus` (0: apptheus counts no GPUs).
use std::{collections::BTreeMap, io::Write as _};

use base64::Engine as _;
use serde::Serialize;

use crate::report::Figures;

/// One node's part of the record. A figure the daemon did not have is left out, as jobstats
/// leaves out what its Prometheus did not have.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Node {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_memory: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_memory: Option<u64>,
    pub total_time: f64,
}

/// An integer where the value is one (a cpuset's CPUs), else a fraction (a CFS quota): jobstats
/// multiplies it by the run time either way.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Number {
    Int(u64),
    Float(f64),
}

impl Number {
    fn of(x: f64) -> Number {
        if x.fract() == 0.0 && x >= 0.0 && x < u64::MAX as f64 {
            Number::Int(x as u64)
        } else {
            Number::Float(x)
        }
    }
}

/// The whole record.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Record {
    pub nodes: BTreeMap<String, Node>,
    pub total_time: u64,
    pub gpus: u32,
}

/// CPU seconds to the millisecond.
fn millis(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The part of `node` from the job's containers there: the CPU time summed; the allocation
/// and the peak the largest of the containers' (they share the job's cgroup).
pub fn node(figures: &[Figures]) -> Node {
    Node {
        cpus: figures
            .iter()
            .filter_map(|f| f.cpus_allowed)
            .reduce(f64::max)
            .map(Number::of),
        total_memory: figures.iter().filter_map(|f| f.memory_limit_bytes).max(),
        used_memory: figures.iter().filter_map(|f| f.memory_peak_bytes).max(),
        total_time: millis(figures.iter().filter_map(|f| f.cpu_seconds).sum()),
    }
}

/// The record of a job whose containers were `nodes` (host name -> its containers there).
pub fn record(nodes: &BTreeMap<String, Vec<Figures>>) -> Record {
    let all = || nodes.values().flatten();
    let start = all().map(|f| f.start_seconds).reduce(f64::min);
    let end = all()
        .map(|f| f.start_seconds + f.wall_seconds)
        .reduce(f64::max);
    let run_time = match (start, end) {
        (Some(s), Some(e)) if e > s => (e - s).round() as u64,
        _ => 0,
    };
    Record {
        nodes: nodes
            .iter()
            .map(|(host, figures)| (host.clone(), node(figures)))
            .collect(),
        total_time: run_time,
        gpus: 0,
    }
}

/// `JS1:` + base64 of the gzip of the record's compact JSON, as jobstats stores it.
pub fn encode(record: &Record) -> std::io::Result<String> {
    let json = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&json)?;
    let bytes = gz.finish()?;
    Ok(format!(
        "JS1:{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    ))
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use apptheus_api::State;

    use super::*;

    fn figures(start: f64, wall: f64, cpu: f64, cpus: f64, peak: u64, limit: u64) -> Figures {
        Figures {
            cpu_seconds: Some(cpu),
            cpus_allowed: Some(cpus),
            memory_peak_bytes: Some(peak),
            memory_limit_bytes: Some(limit),
            ..Figures::bare("c", "u", State::Ended, start, wall)
        }
    }

    #[test]
    fn the_record_has_jobstats_fields_and_reads_back_through_its_pipeline() {
        let nodes = BTreeMap::from([
            (
                "node1".to_string(),
                vec![
                    figures(1000.0, 10.0, 3.04, 2.0, 100, 1 << 30),
                    figures(1012.0, 8.0, 5.0, 2.0, 300, 1 << 30),
                ],
            ),
            (
                "node2".to_string(),
                vec![figures(1001.0, 5.0, 1.25, 0.5, 64, 2 << 30)],
            ),
        ]);
        let r = record(&nodes);
        let doc = serde_json::to_value(&r).unwrap();
        assert_eq!(
            doc,
            serde_json::json!({
                "nodes": {
                    "node1": {"cpus": 2, "total_memory": 1u64 << 30, "used_memory": 300, "total_time": 8.04},
                    "node2": {"cpus": 0.5, "total_memory": 2u64 << 30, "used_memory": 64, "total_time": 1.25},
                },
                "total_time": 20,
                "gpus": 0,
            })
        );
        let text = encode(&r).unwrap();
        let b64 = text.strip_prefix("JS1:").unwrap();
        let gz = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let mut json = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut json)
            .unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&json).unwrap(),
            doc
        );
    }

    #[test]
    fn what_the_daemon_did_not_have_is_left_out() {
        let f = Figures::bare("c", "u", State::Ended, 0.0, 1.0);
        let n = serde_json::to_value(node(&[f])).unwrap();
        assert_eq!(n, serde_json::json!({"total_time": 0.0}));
    }
}
