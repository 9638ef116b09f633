//! How much the kernel side may hold: the maps are sized for the daemon's limits at load time,
//! so that one user's churn or fork bomb cannot fill them for everyone else.

/// The bounds the programs and their maps are loaded with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Containers with counters at once: live ones plus the ended ones retained, at the
    /// daemon's limits. Each is an entry of `COUNTERS`; a registration past it fails.
    pub containers: usize,
    /// Processes tracked at once, over all containers: the entries of `TRACKED` (preallocated,
    /// about 70 bytes each).
    pub processes: usize,
    /// Processes the fork hook tracks in one container besides those it had when registered.
    /// A child forked past it is not tracked (and counted in `untracked`); it still lives in
    /// the container's cgroup, which its parent's membership gives it, so its CPU, memory and
    /// I/O are still measured there.
    pub per_container: u64,
}

/// The largest `TRACKED` the daemon makes (64 MiB of preallocated entries).
pub const MAX_PROCESSES: usize = 1 << 20;

impl Default for Limits {
    /// The daemon's default `--gateway.max-containers` (4096) live containers with room for as
    /// many retained ones, 131,072 tracked processes, 16,384 in any one container (an eighth
    /// of the map: a fork bomb in one container leaves the rest to the others).
    fn default() -> Limits {
        Limits {
            containers: 16_384,
            processes: 1 << 17,
            per_container: 16_384,
        }
    }
}

impl Limits {
    /// Limits for `live` containers at once and `retained` ended ones kept, each tracking at
    /// most `per_container` processes: the process map holds every live container at its
    /// bound, up to `MAX_PROCESSES` (beyond it, containers share the map first come, first
    /// served, and no single one can take more than its bound).
    pub fn new(live: usize, retained: usize, per_container: u64) -> Limits {
        let all = (live as u64).saturating_mul(per_container);
        Limits {
            containers: live.saturating_add(retained).max(1),
            processes: usize::try_from(all)
                .unwrap_or(MAX_PROCESSES)
                .clamp(1, MAX_PROCESSES),
            per_container: per_container.max(1),
        }
    }

    /// The map sizes as the loader takes them, or why they cannot be.
    pub(super) fn map_sizes(&self) -> Result<(u32, u32), String> {
        let size = |n: usize, what: &str| {
            u32::try_from(n)
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("{what} must be between 1 and {}, not {n}", u32::MAX))
        };
        Ok((
            size(self.containers, "Limits::containers")?,
            size(self.processes, "Limits::processes")?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_the_daemons_bounds() {
        let l = Limits::new(100, 50, 1000);
        assert_eq!(
            (l.containers, l.processes, l.per_container),
            (150, 100_000, 1000)
        );
        let huge = Limits::new(usize::MAX, usize::MAX, u64::MAX);
        assert_eq!(huge.processes, MAX_PROCESSES);
        assert!(huge.map_sizes().is_err(), "usize::MAX containers");
        assert_eq!(Limits::default().map_sizes(), Ok((16_384, 131_072)));
        assert!(
            Limits {
                processes: 0,
                ..Limits::default()
            }
            .map_sizes()
            .is_err()
        );
    }
}
