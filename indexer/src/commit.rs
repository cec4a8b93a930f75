//! Which offsets may be committed while bulk requests finish in any order.
//!
//! The consume loop cuts its records, in the order it consumed them, into lanes: groups that each
//! travel as bulk requests of their own, several at once, and become durable in whatever order
//! the engine answers. A lane holds, for every partition it has records of, a contiguous run of
//! that partition's consumed records, later than the runs of every lane cut before it. A
//! partition's commit position may move past a run only when that run and every earlier run of
//! the partition are durable (ARCHITECTURE.md property 3): the tracker keeps each partition's
//! runs in order and advances over the longest durable prefix.
//!
//! Plain data, no clock, no I/O: the loop tells it what it cut, what became durable and what was
//! revoked, and asks what to commit.

use std::collections::{BTreeMap, VecDeque};

/// Names one lane for the lifetime of a consume loop; never reused.
pub type LaneId = u64;

/// One lane's run of records of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    lane: LaneId,
    /// The offset after the run's last record: the commit position once the run is durable.
    next: i64,
    durable: bool,
}

/// The runs handed out per partition, and the commit positions they allow.
#[derive(Debug, Default, Clone)]
pub struct CommitTracker {
    runs: BTreeMap<i32, VecDeque<Run>>,
    /// The furthest durable position of each partition (a prefix of its runs all durable).
    durable: BTreeMap<i32, i64>,
    /// Partitions whose durable position moved since the last [`CommitTracker::take_advanced`].
    advanced: BTreeMap<i32, i64>,
}

impl CommitTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers that `lane` holds the records of `partition` up to offset `next - 1` that no
    /// earlier lane holds. Call it when the lane is cut, in the order lanes are cut.
    pub fn track(&mut self, lane: LaneId, partition: i32, next: i64) {
        let runs = self.runs.entry(partition).or_default();
        debug_assert!(
            runs.back().is_none_or(|r| r.next < next),
            "runs of partition {partition} must be tracked in offset order"
        );
        runs.push_back(Run {
            lane,
            next,
            durable: false,
        });
    }

    /// Marks every run of `lane` durable and moves each partition's position over its durable
    /// prefix. Returns whether any position moved. A lane the tracker does not know (its
    /// partitions were revoked since it was cut) changes nothing.
    pub fn complete(&mut self, lane: LaneId) -> bool {
        let mut moved = false;
        for (partition, runs) in &mut self.runs {
            let Some(run) = runs.iter_mut().find(|r| r.lane == lane) else {
                continue;
            };
            run.durable = true;
            let mut position = None;
            while runs.front().is_some_and(|r| r.durable) {
                position = runs.pop_front().map(|r| r.next);
            }
            if let Some(next) = position {
                self.durable.insert(*partition, next);
                self.advanced.insert(*partition, next);
                moved = true;
            }
        }
        self.runs.retain(|_, runs| !runs.is_empty());
        moved
    }

    /// The positions that moved since the last call, to commit: partition → next offset.
    pub fn take_advanced(&mut self) -> BTreeMap<i32, i64> {
        std::mem::take(&mut self.advanced)
    }

    /// The furthest durable position of every partition the tracker saw move and still owns.
    pub fn durable(&self) -> &BTreeMap<i32, i64> {
        &self.durable
    }

    /// Forgets `partitions`: their runs still in flight will never move a position, and what
    /// they had made durable is no longer this consumer's to commit.
    pub fn revoke(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.runs.remove(p);
            self.durable.remove(p);
            self.advanced.remove(p);
        }
    }

    /// Whether `lane` holds a run of `partition` that is still waiting to become durable (false
    /// once the partition was revoked).
    pub fn holds(&self, lane: LaneId, partition: i32) -> bool {
        self.runs
            .get(&partition)
            .is_some_and(|runs| runs.iter().any(|r| r.lane == lane && !r.durable))
    }

    /// Whether runs are waiting to become durable.
    pub fn has_pending(&self) -> bool {
        !self.runs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A step of a scenario.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        /// `track(lane, partition, next)`.
        Cut(LaneId, i32, i64),
        /// `complete(lane)`.
        Done(LaneId),
        /// `revoke(&[partition])`.
        Revoke(i32),
    }
    use Step::{Cut, Done, Revoke};

    #[test]
    fn positions_move_only_over_durable_prefixes() {
        // (name, steps, what `take_advanced` returns after the last step, `durable()` then)
        type Positions = Vec<(i32, i64)>;
        let cases: Vec<(&str, Vec<Step>, Positions, Positions)> = vec![
            ("nothing cut", vec![], vec![], vec![]),
            ("cut, not durable", vec![Cut(1, 0, 10)], vec![], vec![]),
            (
                "one lane durable",
                vec![Cut(1, 0, 10), Done(1)],
                vec![(0, 10)],
                vec![(0, 10)],
            ),
            (
                "a later lane durable first waits for the earlier one",
                vec![Cut(1, 0, 10), Cut(2, 0, 20), Done(2)],
                vec![],
                vec![],
            ),
            (
                "then the earlier one: both at once",
                vec![Cut(1, 0, 10), Cut(2, 0, 20), Done(2), Done(1)],
                vec![(0, 20)],
                vec![(0, 20)],
            ),
            (
                "a gap in the middle stops the prefix",
                vec![
                    Cut(1, 0, 10),
                    Cut(2, 0, 20),
                    Cut(3, 0, 30),
                    Done(1),
                    Done(3),
                ],
                vec![(0, 10)],
                vec![(0, 10)],
            ),
            (
                "partitions are independent: one lane spans two",
                vec![
                    Cut(1, 0, 10),
                    Cut(1, 1, 5),
                    Cut(2, 0, 20),
                    Cut(3, 1, 9),
                    Done(3),
                    Done(2),
                ],
                vec![],
                vec![],
            ),
            (
                "the spanning lane frees both",
                vec![
                    Cut(1, 0, 10),
                    Cut(1, 1, 5),
                    Cut(2, 0, 20),
                    Cut(3, 1, 9),
                    Done(3),
                    Done(2),
                    Done(1),
                ],
                vec![(0, 20), (1, 9)],
                vec![(0, 20), (1, 9)],
            ),
            (
                "a lane of another partition does not hold this one back",
                vec![Cut(1, 1, 5), Cut(2, 0, 20), Done(2)],
                vec![(0, 20)],
                vec![(0, 20)],
            ),
            (
                "completing twice or an unknown lane changes nothing",
                vec![Cut(1, 0, 10), Done(7), Done(1), Done(1)],
                vec![(0, 10)],
                vec![(0, 10)],
            ),
            (
                "revoked: a lane still in flight never moves it",
                vec![Cut(1, 0, 10), Cut(2, 1, 4), Revoke(1), Done(2)],
                vec![],
                vec![],
            ),
            (
                "revoked after it moved: nothing left to commit for it",
                vec![Cut(1, 0, 10), Cut(2, 1, 4), Done(2), Revoke(1), Done(1)],
                vec![(0, 10)],
                vec![(0, 10)],
            ),
            (
                "revoked then assigned again: old lanes do not count for new runs",
                vec![
                    Cut(1, 0, 10),
                    Revoke(0),
                    Cut(2, 0, 6),
                    Cut(3, 0, 12),
                    Done(1),
                    Done(3),
                ],
                vec![],
                vec![],
            ),
            (
                "revoked then assigned again: new runs commit on their own",
                vec![
                    Cut(1, 0, 10),
                    Revoke(0),
                    Cut(2, 0, 6),
                    Cut(3, 0, 12),
                    Done(1),
                    Done(2),
                ],
                vec![(0, 6)],
                vec![(0, 6)],
            ),
            (
                "a revoke keeps the other partitions",
                vec![Cut(1, 0, 10), Cut(1, 1, 3), Done(1), Revoke(1)],
                vec![(0, 10)],
                vec![(0, 10)],
            ),
        ];
        for (name, steps, advanced, durable) in cases {
            let mut t = CommitTracker::new();
            for step in &steps {
                match *step {
                    Cut(lane, p, next) => t.track(lane, p, next),
                    Done(lane) => {
                        t.complete(lane);
                    }
                    Revoke(p) => t.revoke(&[p]),
                }
            }
            let got: Vec<(i32, i64)> = t.take_advanced().into_iter().collect();
            assert_eq!(got, advanced, "{name}: advanced");
            let got: Vec<(i32, i64)> = t.durable().iter().map(|(p, o)| (*p, *o)).collect();
            assert_eq!(got, durable, "{name}: durable");
        }
    }

    #[test]
    fn take_hands_out_each_move_once_and_complete_says_when_something_moved() {
        let mut t = CommitTracker::new();
        t.track(1, 0, 10);
        t.track(2, 0, 20);
        t.track(3, 2, 7);
        assert!(t.has_pending());
        // (lane completed, whether a position moved, what take_advanced returns then)
        type Positions = Vec<(i32, i64)>;
        let cases: [(LaneId, bool, Positions); 4] = [
            (2, false, vec![]),
            (1, true, vec![(0, 20)]),
            (1, false, vec![]),
            (3, true, vec![(2, 7)]),
        ];
        for (lane, moved, advanced) in cases {
            assert_eq!(t.complete(lane), moved, "lane {lane}");
            let got: Vec<(i32, i64)> = t.take_advanced().into_iter().collect();
            assert_eq!(got, advanced, "lane {lane}");
        }
        assert!(!t.has_pending());
        let durable: Vec<(i32, i64)> = t.durable().iter().map(|(p, o)| (*p, *o)).collect();
        assert_eq!(durable, [(0, 20), (2, 7)]);
    }

    /// Random interleavings against a brute-force model: the position never passes a record
    /// that is not durable, and it reaches the end once every lane is durable.
    #[test]
    fn never_passes_a_record_that_is_not_durable() {
        for seed in 0..200 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let partitions = 3;
            let mut t = CommitTracker::new();
            // Each lane: its runs as (partition, first offset, next offset).
            let mut lanes: Vec<Vec<(i32, i64, i64)>> = Vec::new();
            let mut ends = vec![0i64; partitions];
            for lane in 0..rng.usize(1..12) {
                let mut runs = Vec::new();
                for (p, end) in ends.iter_mut().enumerate() {
                    if rng.bool() {
                        let first = *end;
                        *end += rng.i64(1..5);
                        runs.push((p as i32, first, *end));
                        t.track(lane as LaneId, p as i32, *end);
                    }
                }
                lanes.push(runs);
            }
            let mut order: Vec<usize> = (0..lanes.len()).collect();
            rng.shuffle(&mut order);
            let mut durable_lanes = Vec::new();
            let mut committed: BTreeMap<i32, i64> = BTreeMap::new();
            for lane in order {
                t.complete(lane as LaneId);
                durable_lanes.push(lane);
                committed.extend(t.take_advanced());
                for (p, position) in &committed {
                    // Every record below the position belongs to a durable lane.
                    for (l, runs) in lanes.iter().enumerate() {
                        for (rp, first, _) in runs {
                            if rp == p && first < position {
                                assert!(
                                    durable_lanes.contains(&l),
                                    "seed {seed}: partition {p} at {position} passed lane {l}"
                                );
                            }
                        }
                    }
                }
            }
            for (p, end) in ends.iter().enumerate() {
                if *end > 0 {
                    assert_eq!(committed.get(&(p as i32)), Some(end), "seed {seed}");
                }
            }
            assert!(!t.has_pending());
        }
    }
}
