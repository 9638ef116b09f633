//! Following the tracker's events: ends, and the moves of children forked before their parent
//! was moved.
use std::sync::Arc;

use apptheus_common::{Event, EventKind};
use tokio_util::sync::CancellationToken;

use super::{Registry, monotonic_ns};
use crate::{cgroup::ContainerCgroup, container::Identity, testhook, tracker::EventStream};

/// A process to put into a container's cgroup.
pub struct Move {
    key: u64,
    id: Arc<Identity>,
    cgroup: Arc<ContainerCgroup>,
    pid: i32,
}

/// Whether `ev` is a fork by a process this batch moves: that parent is still outside the
/// container until the batch's moves are done, so its child did not inherit the container's
/// cgroup, however late it forked (the time rule only knows the moves already done; a slow
/// event pace puts a parent's fork and its child's in one batch).
fn parent_moving(moves: &[Move], ev: &Event) -> bool {
    moves
        .iter()
        .any(|m| m.key == ev.key && u32::try_from(m.pid) == Ok(ev.ppid))
}

impl Registry {
    /// Follow the tracker's events until `shutdown`: end containers whose last process exited,
    /// and move children forked before their parent was moved.
    pub async fn follow(
        self: Arc<Self>,
        mut events: EventStream,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut batch = Vec::with_capacity(256);
        loop {
            batch.clear();
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                r = events.next_batch(&mut batch) => r.map_err(|e| anyhow::anyhow!("reading tracker events: {e}"))?,
            }
            let moves = self.on_events(&batch);
            if !moves.is_empty() {
                let r = self.clone();
                // cgroup writes are file I/O: off the async workers.
                let _ = tokio::task::spawn_blocking(move || r.apply_moves(moves)).await;
            }
        }
    }

    /// Process a batch of tracker events. Returns the processes that must be moved into their
    /// container's cgroup (children forked before their parent was moved).
    fn on_events(&self, events: &[Event]) -> Vec<Move> {
        let mut moves = Vec::new();
        let mut exited = Vec::new();
        {
            let mut st = self.state();
            for ev in events {
                let Some(c) = st.containers.get_mut(&ev.key) else {
                    continue;
                };
                match ev.kind() {
                    Some(EventKind::Fork)
                        if ev.ts_ns <= c.inherit_after_ns || parent_moving(&moves, ev) =>
                    {
                        match &c.cgroup {
                            Some(cgroup) => moves.push(Move {
                                key: ev.key,
                                id: c.identity.clone(),
                                cgroup: cgroup.clone(),
                                pid: ev.pid as i32,
                            }),
                            None => c.early_forks.push(ev.pid as i32),
                        }
                    }
                    Some(EventKind::Exit) if c.ended.is_none() => exited.push(ev.key),
                    _ => {}
                }
            }
        }
        exited.dedup();
        for key in exited {
            if matches!(self.tracker.counters(key), Ok(Some(c)) if c.live == 0) {
                self.end(key);
            }
        }
        moves
    }

    /// Carry out moves (blocking), then let later forks of these processes inherit. The pid of
    /// an event is a member only while the tracker has it under the container's key (its entry
    /// goes when it exits): each is held by a pidfd and checked so before it is moved.
    fn apply_moves(&self, moves: Vec<Move>) {
        let pids: Vec<i32> = moves.iter().map(|m| m.pid).collect();
        testhook::pause(testhook::Point::Move, &pids);
        let mut members = 0;
        for m in &moves {
            if let Some(process) = self.tracker.member(m.pid, m.key) {
                self.move_into(&m.cgroup, &process, m.key, &m.id.id);
                members += 1;
            }
        }
        tracing::debug!(
            pids = ?pids,
            members,
            "processes forked before their parent was moved: members moved"
        );
        let now = monotonic_ns();
        let mut st = self.state();
        for m in moves {
            if let Some(c) = st.containers.get_mut(&m.key)
                && c.inherit_after_ns != u64::MAX
            {
                c.inherit_after_ns = c.inherit_after_ns.max(now);
            }
        }
    }
}
