//! A lane: a run of consecutive consumed records that travels as bulk requests of its own, and
//! the loop's holdings around the lanes (the buffer that becomes the next lane, the lanes the
//! breaker stopped, and the commit tracker that knows which partitions each lane covers).
//!
//! Plain data and bookkeeping: no I/O, no clock of its own, so each rule is unit-tested here.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use pipeline_contract::dlq::ErrorClass;
use pipeline_contract::search::{IndexLayout, SearchDocument};
use pipeline_contract::{MessageEvent, Timestamp};

use crate::batch::{Batch, BatchLimits};
use crate::bulk;
use crate::commit::{CommitTracker, LaneId};
use crate::record::ConsumedRecord;

/// Durable positions are committed at most this often while lanes are running (asynchronously),
/// and at once when the loop goes idle, at a revoke and at shutdown (synchronously).
pub(crate) const COMMIT_INTERVAL: Duration = Duration::from_millis(200);

/// One consumed record on its way through a lane.
///
/// Its bulk lines are not kept with it: they are written once, when the record is consumed,
/// straight into the body of the lane it joins, which goes out as it is. Only a later request
/// for part of a lane (a retry, half of a split, a lane stopped by the breaker) encodes its
/// records again, from the record, which gives the same bytes.
#[derive(Debug)]
pub(crate) struct Item {
    pub(crate) record: ConsumedRecord,
    /// Bytes the item adds to a bulk body; 0 for a dead letter.
    pub(crate) size: usize,
    pub(crate) work: Work,
    pub(crate) attempts: u32,
    pub(crate) first_failure: Option<Timestamp>,
    /// The `traceparent` of the record's consume span, when traces are exported: each bulk
    /// request that carries the item links to it.
    pub(crate) trace: Option<String>,
}

#[derive(Debug)]
pub(crate) enum Work {
    Index,
    DeadLetter { class: ErrorClass, message: String },
}

impl Work {
    pub(crate) fn is_dead_letter(&self) -> bool {
        matches!(self, Self::DeadLetter { .. })
    }
}

/// Decodes a record's event and appends its two bulk lines to `out`; returns how many bytes.
fn encode_record(
    record: &ConsumedRecord,
    layout: &IndexLayout,
    out: &mut Vec<u8>,
) -> Result<usize, (ErrorClass, String)> {
    let bytes = record
        .payload
        .as_deref()
        .ok_or_else(|| (ErrorClass::Undecodable, "record has no value".to_owned()))?;
    let event = MessageEvent::decode(bytes).map_err(|e| (e.error_class(), e.to_string()))?;
    let doc = SearchDocument::try_from(event).map_err(|e| (e.error_class(), e.to_string()))?;
    Ok(bulk::encode_item(layout, &doc, out))
}

impl Item {
    /// Takes a record in, appending its bulk lines to `body` when it can be indexed.
    pub(crate) fn from_record(
        record: ConsumedRecord,
        trace: Option<String>,
        layout: &IndexLayout,
        body: &mut Vec<u8>,
    ) -> Self {
        let (size, work) = match encode_record(&record, layout, body) {
            Ok(size) => (size, Work::Index),
            Err((class, message)) => (0, Work::DeadLetter { class, message }),
        };
        Self {
            record,
            size,
            work,
            attempts: 0,
            first_failure: None,
            trace,
        }
    }
}

/// The bulk body of `items` (dead letters add nothing), encoded again from their records. An
/// item that no longer encodes (it did when consumed, so it cannot) becomes a dead letter, so
/// the body always matches the items.
pub(crate) fn body_of(items: &mut [Item], layout: &IndexLayout) -> Vec<u8> {
    let mut body = Vec::with_capacity(items.iter().map(|i| i.size).sum());
    for item in items {
        if let Work::Index = item.work
            && let Err((class, message)) = encode_record(&item.record, layout, &mut body)
        {
            item.work = Work::DeadLetter { class, message };
            item.size = 0;
        }
    }
    body
}

/// A group of consecutive consumed records that travels as bulk requests of its own.
#[derive(Debug)]
pub(crate) struct Lane {
    pub(crate) id: LaneId,
    /// What is not durable yet, in consumption order.
    pub(crate) items: Vec<Item>,
    /// The bulk body of all of `items`, written as they were consumed; gone once sent.
    pub(crate) body: Option<Vec<u8>>,
}

/// The lane could not be made durable because the breaker is open (or the indexer is shutting
/// down); what is not durable stays in the lane.
#[derive(Debug)]
pub(crate) struct Stalled;

/// The loop's own state: records not yet in a lane, lanes waiting for the breaker, and what
/// may be committed.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) buffer: Batch<Item>,
    /// The bulk body of the buffer's items.
    pub(crate) body: Vec<u8>,
    /// Lanes that stopped while the breaker was open, oldest first; they go out again before
    /// anything new.
    pub(crate) stalled: VecDeque<Lane>,
    pub(crate) tracker: CommitTracker,
    pub(crate) next_lane: LaneId,
    pub(crate) last_commit: Instant,
}

impl Held {
    /// Nothing held yet; the buffer cuts lanes of `limits`.
    pub(crate) fn new(limits: BatchLimits, now: Instant) -> Self {
        Self {
            buffer: Batch::new(limits),
            body: Vec::new(),
            stalled: VecDeque::new(),
            tracker: CommitTracker::new(),
            next_lane: 0,
            last_commit: now,
        }
    }

    /// Takes a consumed record into the buffer, its bulk lines into the buffer's body. A full
    /// buffer is noticed by its `is_due`.
    pub(crate) fn take_in(
        &mut self,
        record: ConsumedRecord,
        trace: Option<String>,
        layout: &IndexLayout,
        now: Instant,
    ) {
        let item = Item::from_record(record, trace, layout, &mut self.body);
        let size = item.size;
        let _ = self.buffer.push(item, size, now);
    }

    /// Cuts the buffer into a new lane and tracks the runs it holds of each partition.
    pub(crate) fn cut_lane(&mut self) -> Lane {
        let id = self.next_lane;
        self.next_lane += 1;
        let items = self.buffer.take();
        let mut ends: Vec<(i32, i64)> = Vec::new();
        for item in &items {
            let (p, next) = (item.record.partition, item.record.offset + 1);
            match ends.iter_mut().find(|(q, _)| *q == p) {
                Some(end) => end.1 = end.1.max(next),
                None => ends.push((p, next)),
            }
        }
        for (p, next) in ends {
            self.tracker.track(id, p, next);
        }
        let capacity = self.body.capacity();
        let body = std::mem::replace(&mut self.body, Vec::with_capacity(capacity));
        Lane {
            id,
            items,
            body: Some(body),
        }
    }

    /// A lane came back: durable (`Ok`), or stalled with what is left of it, less what belongs
    /// to partitions revoked while it ran; a lane with nothing left is complete. Returns whether
    /// the durable positions moved.
    pub(crate) fn finish(&mut self, mut lane: Lane, result: Result<(), Stalled>) -> bool {
        if result.is_err() {
            let tracker = &self.tracker;
            lane.items
                .retain(|i| tracker.holds(lane.id, i.record.partition));
            if !lane.items.is_empty() {
                self.stall(lane);
                return false;
            }
        }
        self.tracker.complete(lane.id)
    }

    /// The positions that moved since the last commit, when they are due: at most every
    /// [`COMMIT_INTERVAL`] while lanes run (`idle` false), at once when none does.
    pub(crate) fn due_commit(&mut self, idle: bool, now: Instant) -> Option<BTreeMap<i32, i64>> {
        if !idle && now.saturating_duration_since(self.last_commit) < COMMIT_INTERVAL {
            return None;
        }
        let advanced = self.tracker.take_advanced();
        if advanced.is_empty() {
            return None;
        }
        self.last_commit = now;
        Some(advanced)
    }

    pub(crate) fn stall(&mut self, lane: Lane) {
        let at = self.stalled.partition_point(|l| l.id < lane.id);
        self.stalled.insert(at, lane);
    }

    /// Drops the records of revoked partitions that are not in a running lane.
    pub(crate) fn revoke(&mut self, revoked: &[i32], layout: &IndexLayout) {
        let keep = |i: &Item| !revoked.contains(&i.record.partition);
        let now = Instant::now();
        let mut kept: Vec<Item> = self.buffer.take().into_iter().filter(keep).collect();
        self.body = body_of(&mut kept, layout);
        for item in kept {
            let size = item.size;
            let _ = self.buffer.push(item, size, now);
        }
        for lane in &mut self.stalled {
            lane.items.retain(keep);
            lane.body = None;
        }
        let tracker = &mut self.tracker;
        self.stalled.retain(|lane| {
            if lane.items.is_empty() {
                // Every record it had left was of a revoked partition: the rest of it is durable.
                tracker.complete(lane.id);
            }
            !lane.items.is_empty()
        });
        tracker.revoke(revoked);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline_contract::MessagePayload;
    use uuid::Uuid;

    fn layout() -> IndexLayout {
        IndexLayout::new("chat").unwrap()
    }

    /// A record of an event that can be indexed, or of garbage.
    fn record(partition: i32, offset: i64, indexable: bool) -> ConsumedRecord {
        let payload = if indexable {
            MessageEvent::Created(MessagePayload {
                id: Uuid::new_v4(),
                conversation_id: Some(Uuid::new_v4()),
                sender_id: Some(Uuid::new_v4()),
                content: format!("record {partition}/{offset}"),
                tenant_id: "tenant-a".into(),
                timestamp: Some(Timestamp::now()),
                updated_at: None,
                metadata: serde_json::Map::new(),
                version: Some(1),
            })
            .encode()
        } else {
            b"{not json".to_vec()
        };
        ConsumedRecord {
            partition,
            offset,
            key: None,
            payload: Some(payload),
            headers: Vec::new(),
        }
    }

    fn held(max_count: usize) -> Held {
        let limits = BatchLimits {
            max_count,
            ..BatchLimits::default()
        };
        Held::new(limits, Instant::now())
    }

    fn push(held: &mut Held, record: ConsumedRecord) {
        held.take_in(record, None, &layout(), Instant::now());
    }

    /// The body a lane would send: what encoding its items one by one gives.
    fn expected_body(items: &mut [Item]) -> Vec<u8> {
        body_of(items, &layout())
    }

    #[test]
    fn a_lane_carries_the_body_of_its_items_and_tracks_each_partition_to_its_last_record() {
        let mut h = held(100);
        // (partition, offset, indexable), in the order consumed.
        let consumed = [
            (0, 10, true),
            (1, 3, true),
            (0, 11, false),
            (2, 7, true),
            (0, 12, true),
        ];
        for (p, o, ok) in consumed {
            push(&mut h, record(p, o, ok));
        }
        let mut lane = h.cut_lane();
        assert_eq!(lane.items.len(), 5);
        let body = lane.body.take().expect("a fresh lane has its body");
        assert_eq!(body, expected_body(&mut lane.items));
        assert_eq!(body.len(), lane.items.iter().map(|i| i.size).sum::<usize>());
        assert!(matches!(lane.items[2].work, Work::DeadLetter { .. }));
        assert!(h.buffer.is_empty() && h.body.is_empty());
        // Durable: each partition moves past the lane's last record of it.
        h.tracker.complete(lane.id);
        let advanced: Vec<(i32, i64)> = h.tracker.take_advanced().into_iter().collect();
        assert_eq!(advanced, [(0, 13), (1, 4), (2, 8)]);
    }

    #[test]
    fn a_revoke_drops_what_is_not_running_and_keeps_bodies_whole() {
        let mut h = held(100);
        for (p, o) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            push(&mut h, record(p, o, true));
        }
        let running = h.cut_lane();
        for (p, o) in [(0, 2), (1, 2)] {
            push(&mut h, record(p, o, true));
        }
        let mut stalled = h.cut_lane();
        stalled.body = None;
        h.stall(stalled);
        for (p, o) in [(1, 3), (0, 3), (1, 4)] {
            push(&mut h, record(p, o, true));
        }

        h.revoke(&[1], &layout());

        // The buffer keeps partition 0 only, and its body is exactly theirs.
        let mut buffered = h.buffer.take();
        let kept: Vec<(i32, i64)> = buffered
            .iter()
            .map(|i| (i.record.partition, i.record.offset))
            .collect();
        assert_eq!(kept, [(0, 3)]);
        assert_eq!(h.body, expected_body(&mut buffered));
        // The stalled lane keeps partition 0 and will be encoded again.
        let lane = &h.stalled[0];
        assert_eq!(lane.items.len(), 1);
        assert_eq!(lane.items[0].record.partition, 0);
        assert!(lane.body.is_none());
        // The running lane no longer holds partition 1; finishing it moves only partition 0.
        assert!(h.tracker.holds(running.id, 0));
        assert!(!h.tracker.holds(running.id, 1));
        h.tracker.complete(running.id);
        let advanced: Vec<(i32, i64)> = h.tracker.take_advanced().into_iter().collect();
        assert_eq!(advanced, [(0, 2)]);
    }

    #[test]
    fn a_stalled_lane_keeps_only_its_partitions_still_held_and_commits_come_when_due() {
        let mut h = held(100);
        for (p, o) in [(0, 0), (1, 0), (0, 1)] {
            push(&mut h, record(p, o, true));
        }
        let lane = h.cut_lane();
        let id = lane.id;
        h.revoke(&[1], &layout());
        // Stalled: the record of revoked partition 1 goes, partition 0 waits in the lane.
        assert!(!h.finish(lane, Err(Stalled)));
        assert_eq!(h.stalled.len(), 1);
        assert!(h.stalled[0].items.iter().all(|i| i.record.partition == 0));
        // Nothing durable yet, so nothing to commit.
        let t0 = Instant::now();
        assert_eq!(h.due_commit(true, t0), None);
        // It comes back durable: partition 0 moves past offset 1.
        let again = h.stalled.pop_front().unwrap();
        assert_eq!(again.id, id);
        assert!(h.finish(again, Ok(())));
        // While lanes run, not before the interval; idle, at once.
        h.last_commit = t0;
        assert_eq!(h.due_commit(false, t0), None);
        let due = h.due_commit(false, t0 + COMMIT_INTERVAL).unwrap();
        assert_eq!(due.into_iter().collect::<Vec<_>>(), [(0, 2)]);
        assert_eq!(h.due_commit(true, t0 + COMMIT_INTERVAL), None);
    }
}
