//! The metric groups an administrator can turn off (`--collector.disable`), for cardinality and
//! for cost: a disabled group's files are not read for any container, and its families are not
//! rendered.
//!
//! Only groups that cost a file read or a handful of series per container are here; the CPU,
//! memory and pids families are the core of every container and always on.
use std::fmt;

/// One group of per-container families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Collector {
    /// Block I/O bytes (`blkio_*`): v1 `blkio.throttle.io_service_bytes*`, v2 `io.stat`.
    Io,
    /// The eBPF process counters (`processes`, `forks_total`, `execs_total`, `exits_total`).
    Processes,
    /// PSI: `pressure_{cpu,memory,io}_{waiting,stalled}_seconds_total` (`*.pressure`).
    Pressure,
    /// CFS bandwidth: `cpu_cfs_*` (`cpu.stat`).
    Throttling,
    /// `memory_events_total` (v2 `memory.events`, v1 `memory.failcnt`).
    MemoryEvents,
    /// The network counters (`network_*`, from the eBPF tracker).
    Network,
}

impl Collector {
    pub const ALL: [Collector; 6] = [
        Collector::Io,
        Collector::Processes,
        Collector::Pressure,
        Collector::Throttling,
        Collector::MemoryEvents,
        Collector::Network,
    ];

    /// The name `--collector.disable` takes.
    pub fn name(self) -> &'static str {
        match self {
            Collector::Io => "io",
            Collector::Processes => "processes",
            Collector::Pressure => "pressure",
            Collector::Throttling => "throttling",
            Collector::MemoryEvents => "memory_events",
            Collector::Network => "network",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// Which groups are on. The default has every one on.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Collectors {
    disabled: u8,
}

impl Collectors {
    pub fn enabled(self, collector: Collector) -> bool {
        self.disabled & collector.bit() == 0
    }

    /// These, with `collector` off.
    pub fn without(self, collector: Collector) -> Collectors {
        Collectors {
            disabled: self.disabled | collector.bit(),
        }
    }

    /// Parses a comma-separated list of group names to disable (`pressure,throttling`); blanks
    /// around names and empty entries are ignored, so `""` disables nothing. An unknown name is
    /// an error that lists the known ones.
    pub fn disabling(list: &str) -> Result<Collectors, String> {
        let mut collectors = Collectors::default();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let Some(collector) = Collector::ALL.iter().find(|c| c.name() == name) else {
                let known: Vec<&str> = Collector::ALL.iter().map(|c| c.name()).collect();
                return Err(format!(
                    "unknown collector {name:?}; known: {}",
                    known.join(", ")
                ));
            };
            collectors = collectors.without(*collector);
        }
        Ok(collectors)
    }

    /// The names of the groups that are off, in `Collector::ALL` order.
    pub fn disabled_names(self) -> Vec<&'static str> {
        Collector::ALL
            .iter()
            .filter(|c| !self.enabled(**c))
            .map(|c| c.name())
            .collect()
    }
}

impl fmt::Debug for Collectors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Collectors {{ disabled: {:?} }}", self.disabled_names())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_on_by_default() {
        let all = Collectors::default();
        assert!(Collector::ALL.iter().all(|c| all.enabled(*c)));
        assert!(all.disabled_names().is_empty());
    }

    #[test]
    fn names_turn_groups_off() {
        let c = Collectors::disabling(" pressure, ,memory_events,pressure ").unwrap();
        assert_eq!(c.disabled_names(), ["pressure", "memory_events"]);
        assert!(!c.enabled(Collector::Pressure));
        assert!(c.enabled(Collector::Throttling));
        assert_eq!(Collectors::disabling("").unwrap(), Collectors::default());
        let every: Vec<&str> = Collector::ALL.iter().map(|c| c.name()).collect();
        let none = Collectors::disabling(&every.join(",")).unwrap();
        assert!(Collector::ALL.iter().all(|c| !none.enabled(*c)));
    }

    #[test]
    fn unknown_names_are_refused_with_the_known_ones() {
        let err = Collectors::disabling("pressure,psi").unwrap_err();
        assert!(err.contains("\"psi\""), "{err}");
        assert!(err.contains("memory_events"), "{err}");
        // Names are exact: no case folding, no family names.
        assert!(Collectors::disabling("Pressure").is_err());
        assert!(Collectors::disabling("apptheus_container_forks_total").is_err());
    }
}
