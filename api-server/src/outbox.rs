//! What the relay still owes Kafka, and the watermark that says what it does not.
//!
//! Owns the bookkeeping between a write and its publication, in memory and under one lock:
//! - a write takes a [`Ticket`] *before* it stamps `updatedAt`, so the stamp is registered while
//!   the write is in flight;
//! - when the write is acknowledged by MongoDB the ticket becomes a pending record (the event of
//!   the document's new state); when MongoDB answered "not matched" the ticket is simply dropped;
//! - when the outcome is unknown (an error after the request may have left, a task that never
//!   finished), the change is *in doubt*: the server may still apply it. A doubt keeps holding
//!   the watermark at its stamp for the settle time (the relay's overlap), and only then becomes
//!   a *recovery scan* of MongoDB from its stamp, which finds the write if it landed;
//! - when memory is full the change is not held in memory: the outbox asks for a scan from its
//!   stamp at once (MongoDB acknowledged it, so it is there to be found).
//!
//! The **watermark** `W` is the time before which every change is published: the smallest of the
//! stamps of writes in flight, of doubts, of pending records, and of the scans wanted (or the
//! clock when there is none of these). It only moves forward, and it is what the relay persists:
//! after a crash, scanning from `W − overlap` finds every change that might not be on Kafka.
//!
//! A scan asked for while a page of the scan is being read is kept apart ([`State::requested`])
//! until the next page starts: that page's read may have begun before the change it looks for
//! landed, so its end must not clear the request.
//!
//! The watermark is this process's own: with several replicas each registers its own (module
//! `replicas`). Writes begin only while the relay vouches for this process's registration
//! (its last heartbeat is recent): a process whose relay cannot persist its watermark takes no
//! write it might fail to publish.
//!
//! It does no I/O: the relay task (module `relay`) sends, scans and persists; this module only
//! decides what to send and how far the watermark may go, which makes it table-testable, and
//! the model test (`model`) drives it through random interleavings against a simulated
//! MongoDB and Kafka.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pipeline_contract::kafka::{EventHeaders, MessageId};
use pipeline_contract::time::Timestamp;
use pipeline_contract::worker::lease::RelayBacklog;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::store::{After, CorruptDocument, StoredMessage};

#[cfg(test)]
mod model;

/// One change ready to go to Kafka: key, value and headers per the contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundRecord {
    pub key: String,
    pub payload: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
    /// The `traceparent` of the request that made the change, when it is being traced; `None`
    /// for a change read back by a scan (its request is gone: the publish starts a new trace).
    pub origin: Option<String>,
}

impl OutboundRecord {
    /// The record of a document's current state.
    pub fn of(doc: &StoredMessage) -> Result<Self, CorruptDocument> {
        let event = doc.to_event()?;
        let message_id = MessageId::of(&event).ok_or_else(|| CorruptDocument {
            id: doc.id.clone(),
            reason: "no version".into(),
        })?;
        let headers = EventHeaders {
            correlation_id: doc.correlation_id.clone(),
            message_id,
            timestamp: event
                .changed_at()
                .unwrap_or_else(|| crate::store::to_timestamp(doc.updated_at)),
            traceparent: None,
        };
        Ok(Self {
            key: doc.conversation_id.clone(),
            payload: event.encode(),
            headers: headers.pairs(),
            origin: None,
        })
    }
}

/// A pending change: ordered by stamp so the oldest bounds the watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PendingKey {
    pub stamp: i64,
    pub id: Uuid,
    pub version: u64,
}

/// The time in milliseconds since the epoch, as the outbox reads it (the wall clock in
/// production, a simulated one in the model test).
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

fn wall_clock() -> i64 {
    Timestamp::now().timestamp_millis()
}

#[derive(Debug, Default)]
struct State {
    /// Writes in flight: (stamp, ticket number).
    writing: BTreeMap<(i64, u64), ()>,
    /// Writes whose outcome is unknown: (stamp, ticket number) → when they become a scan.
    doubts: BTreeMap<(i64, u64), i64>,
    next_ticket: u64,
    /// The largest stamp handed out: stamps never go backwards, even if the clock does.
    last_stamp: i64,
    /// Changes acknowledged by MongoDB and not yet by Kafka.
    pending: BTreeMap<PendingKey, OutboundRecord>,
    /// The pending ones handed to the producer and not answered yet.
    sending: HashSet<PendingKey>,
    /// The newest version of each message this process has queued or published, with its stamp:
    /// a scan skips what is already covered. Pruned behind the watermark.
    known: HashMap<Uuid, (u64, i64)>,
    /// Where the recovery scan continues; `None` when none is under way.
    recovery: Option<After>,
    /// The earliest scan asked for since the current page began: merged into `recovery` when
    /// the next page starts (see the module documentation).
    requested: Option<After>,
    /// Watermark last reported (never decreases).
    watermark: i64,
    /// Changes left to the scan because memory was full.
    overflowed: u64,
    /// Until when the relay vouches for this process's registration (`None`: not registered).
    vouched_until: Option<Instant>,
}

/// A write was refused because the relay has not persisted this process's registration
/// recently (MongoDB unreachable from the relay, or the relay not started yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the relay has not registered this api-server recently; writes wait until it has")]
pub struct Unvouched;

/// The shared outbox (see the module documentation).
pub struct Outbox {
    state: Mutex<State>,
    max_pending: usize,
    /// How long a write in doubt holds the watermark before the scan looks for it.
    settle_ms: i64,
    clock: Clock,
    /// Woken after every committed write and every scan request.
    pub wake: Notify,
    /// Notified when the relay vouches for this process (start-up waits for the first time).
    pub vouched: Notify,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("max_pending", &self.max_pending)
            .field("settle_ms", &self.settle_ms)
            .field("snapshot", &self.snapshot())
            .finish_non_exhaustive()
    }
}

/// A write in flight. Dropping it without [`Outbox::committed`] or [`Ticket::not_written`] means
/// the outcome is unknown: the change is then in doubt (see the module documentation), so a
/// write that did reach MongoDB, even after its caller gave up on it, is never skipped.
#[derive(Debug)]
pub struct Ticket {
    outbox: Arc<Outbox>,
    stamp: i64,
    number: u64,
    settled: bool,
}

impl Ticket {
    /// The time to write as the change's `updatedAt`.
    pub fn stamp(&self) -> Timestamp {
        Timestamp::from_millis(self.stamp).unwrap_or_else(Timestamp::now)
    }

    /// MongoDB answered and wrote nothing (duplicate key, version mismatch).
    pub fn not_written(mut self) {
        self.settled = true;
        self.outbox
            .lock()
            .writing
            .remove(&(self.stamp, self.number));
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.settled {
            let now = (self.outbox.clock)();
            let mut state = self.outbox.lock();
            let key = (self.stamp, self.number);
            state.writing.remove(&key);
            let settles_at = now.max(self.stamp).saturating_add(self.outbox.settle_ms);
            state.doubts.insert(key, settles_at);
            drop(state);
            self.outbox.wake.notify_one();
        }
    }
}

fn request_scan(state: &mut State, from_millis: i64) {
    let from = After {
        millis: from_millis,
        id: String::new(),
    };
    if state
        .requested
        .as_ref()
        .is_none_or(|r| r.millis > from_millis)
    {
        state.requested = Some(from);
    }
}

/// Doubts whose settle time has come become scan requests from their stamps.
fn settle_doubts(state: &mut State, now: i64) {
    // Ordered by stamp, not by settle time: look at every one.
    let due: Vec<(i64, u64)> = state
        .doubts
        .iter()
        .filter(|&(_, &at)| at <= now)
        .map(|(&key, _)| key)
        .collect();
    for key in due {
        state.doubts.remove(&key);
        request_scan(state, key.0);
    }
}

/// Whether the cursor `(millis, id)` is at or before `other`.
fn at_or_before(cursor: &After, other: &After) -> bool {
    (cursor.millis, cursor.id.as_str()) <= (other.millis, other.id.as_str())
}

/// What the relay's gauges show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub watermark: i64,
    pub pending: usize,
    pub writing: usize,
    /// Writes whose outcome is unknown, not yet looked for.
    pub doubtful: usize,
    /// A scan is under way or wanted.
    pub recovering: bool,
    pub overflowed: u64,
}

impl Outbox {
    /// An outbox on the wall clock; a write in doubt is looked for `settle` after its outcome
    /// became unknown.
    pub fn new(max_pending: usize, settle: Duration) -> Arc<Self> {
        Self::with_clock(
            max_pending,
            i64::try_from(settle.as_millis()).unwrap_or(i64::MAX),
            Arc::new(wall_clock),
        )
    }

    /// An outbox reading the time from `clock` (the model test's simulated time).
    pub fn with_clock(max_pending: usize, settle_ms: i64, clock: Clock) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            max_pending: max_pending.max(1),
            settle_ms: settle_ms.max(0),
            clock,
            wake: Notify::new(),
            vouched: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every method leaves it whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a write about to happen and gives it its `updatedAt`; refused while the relay
    /// does not vouch for this process (see the module documentation).
    pub fn begin(self: &Arc<Self>) -> Result<Ticket, Unvouched> {
        if !self.is_vouched(Instant::now()) {
            return Err(Unvouched);
        }
        Ok(self.begin_at((self.clock)()))
    }

    /// The relay persisted this process's registration: writes may begin until `until`.
    pub fn vouch(&self, until: Instant) {
        self.lock().vouched_until = Some(until);
        self.vouched.notify_one();
    }

    pub fn is_vouched(&self, now: Instant) -> bool {
        self.lock().vouched_until.is_some_and(|until| now < until)
    }

    fn begin_at(self: &Arc<Self>, now: i64) -> Ticket {
        let mut state = self.lock();
        let stamp = now.max(state.last_stamp);
        state.last_stamp = stamp;
        let number = state.next_ticket;
        state.next_ticket += 1;
        state.writing.insert((stamp, number), ());
        Ticket {
            outbox: Arc::clone(self),
            stamp,
            number,
            settled: false,
        }
    }

    /// MongoDB acknowledged the write of `doc` (whose `updatedAt` is the ticket's stamp): its
    /// event becomes pending. `origin` is the `traceparent` of the request that made it.
    pub fn committed(&self, mut ticket: Ticket, doc: &StoredMessage, origin: Option<String>) {
        ticket.settled = true;
        let record = OutboundRecord::of(doc).map(|mut record| {
            record.origin = origin;
            record
        });
        let mut state = self.lock();
        state.writing.remove(&(ticket.stamp, ticket.number));
        match (record, Uuid::parse_str(&doc.id)) {
            (Ok(record), Ok(id)) if state.pending.len() < self.max_pending => {
                let key = PendingKey {
                    stamp: ticket.stamp,
                    id,
                    version: doc.version(),
                };
                remember(&mut state, key);
                state.pending.insert(key, record);
            }
            // Full (or, impossibly, a document this process could not encode): MongoDB has it,
            // the scan will read it back.
            _ => {
                state.overflowed += 1;
                request_scan(&mut state, ticket.stamp);
            }
        }
        drop(state);
        self.wake.notify_one();
    }

    /// A document found by a scan: pending unless this process already queued or published
    /// its version (or a newer one). Returns whether it was queued.
    pub fn recovered(&self, doc: &StoredMessage) -> Result<bool, CorruptDocument> {
        let id = Uuid::parse_str(&doc.id).map_err(|e| CorruptDocument {
            id: doc.id.clone(),
            reason: e.to_string(),
        })?;
        let version = doc.version();
        let mut state = self.lock();
        if state.known.get(&id).is_some_and(|&(v, _)| v >= version) {
            return Ok(false);
        }
        let record = OutboundRecord::of(doc)?;
        let key = PendingKey {
            stamp: doc.updated_at.timestamp_millis(),
            id,
            version,
        };
        remember(&mut state, key);
        state.pending.insert(key, record);
        Ok(true)
    }

    /// Up to `limit` pending records not yet handed to the producer, oldest first; they count
    /// as sending until [`Self::published`] or [`Self::failed`].
    pub fn take_unsent(&self, limit: usize) -> Vec<(PendingKey, OutboundRecord)> {
        let mut state = self.lock();
        let State {
            pending, sending, ..
        } = &mut *state;
        let mut out = Vec::new();
        for (key, record) in pending.iter() {
            if out.len() >= limit {
                break;
            }
            if sending.insert(*key) {
                out.push((*key, record.clone()));
            }
        }
        out
    }

    /// Kafka acknowledged the record.
    pub fn published(&self, key: PendingKey) {
        let mut state = self.lock();
        state.sending.remove(&key);
        state.pending.remove(&key);
    }

    /// The send failed: the record goes back to the unsent ones.
    pub fn failed(&self, key: PendingKey) {
        self.lock().sending.remove(&key);
    }

    /// Asks for a scan from `from_millis` (tests: production asks through a settled doubt and
    /// a full outbox).
    #[cfg(test)]
    fn request_scan(&self, from_millis: i64) {
        request_scan(&mut self.lock(), from_millis);
        self.wake.notify_one();
    }

    /// Where the next page of the scan starts, if a scan is wanted and memory has room for what
    /// it finds. Scans asked for until now join it here; the relay reads the page and then
    /// calls [`Self::scanned`] with this cursor.
    pub fn scan_cursor(&self) -> Option<After> {
        let now = (self.clock)();
        let mut state = self.lock();
        settle_doubts(&mut state, now);
        if !self.has_room(&state) {
            return None;
        }
        if let Some(asked) = state.requested.take()
            && !state
                .recovery
                .as_ref()
                .is_some_and(|current| at_or_before(current, &asked))
        {
            state.recovery = Some(asked);
        }
        state.recovery.clone()
    }

    fn has_room(&self, state: &State) -> bool {
        state.pending.len() < (self.max_pending / 2).max(1)
    }

    /// Whether memory has room for another page of a scan (an adoption's, see `replicas`).
    pub fn has_room_for_scan(&self) -> bool {
        self.has_room(&self.lock())
    }

    /// The stamp of the oldest change held and not yet acknowledged by Kafka.
    pub fn oldest_pending_stamp(&self) -> Option<i64> {
        self.lock().pending.first_key_value().map(|(k, _)| k.stamp)
    }

    /// The page from `from` (a cursor [`Self::scan_cursor`] gave) was read and ended at `last`
    /// (`None`: nothing found); `complete` when the page was not full. A cursor moved meanwhile
    /// by another request is kept.
    pub fn scanned(&self, from: &After, last: Option<After>, complete: bool) {
        let mut state = self.lock();
        if state.recovery.as_ref() != Some(from) {
            return;
        }
        state.recovery = if complete { None } else { last };
    }

    /// Whether everything held in memory is published (shutdown waits for this; a scan still
    /// wanted, a doubt included, is left to whoever adopts this process's registration).
    pub fn is_drained(&self) -> bool {
        let state = self.lock();
        state.writing.is_empty() && state.pending.is_empty()
    }

    /// Whether nothing at all is owed: drained, no write in doubt and no scan wanted.
    pub fn owes_nothing(&self) -> bool {
        let state = self.lock();
        state.writing.is_empty()
            && state.doubts.is_empty()
            && state.pending.is_empty()
            && state.recovery.is_none()
            && state.requested.is_none()
    }

    /// The changes held in memory and not yet on Kafka, counted by age bucket at `now`
    /// (index = bucket, `Clear` first).
    pub fn pending_by_age(&self, now: i64) -> [usize; 4] {
        let mut counts = [0; 4];
        for key in self.lock().pending.keys() {
            counts[RelayBacklog::of_age_millis(now.saturating_sub(key.stamp)) as usize] += 1;
        }
        counts
    }

    /// The watermark now; forgets known versions that fell behind it by more than `keep_ms`.
    pub fn watermark(&self, keep_ms: i64) -> i64 {
        self.watermark_at((self.clock)(), keep_ms)
    }

    fn watermark_at(&self, now: i64, keep_ms: i64) -> i64 {
        let mut state = self.lock();
        settle_doubts(&mut state, now);
        let mut w = now.max(state.last_stamp);
        let bounds = [
            state
                .writing
                .first_key_value()
                .map(|(&(stamp, _), _)| stamp),
            state.doubts.first_key_value().map(|(&(stamp, _), _)| stamp),
            state.pending.first_key_value().map(|(key, _)| key.stamp),
            state.recovery.as_ref().map(|c| c.millis),
            state.requested.as_ref().map(|c| c.millis),
        ];
        for bound in bounds.into_iter().flatten() {
            w = w.min(bound);
        }
        // A scan requested below the reported watermark does not move it back.
        w = w.max(state.watermark);
        state.watermark = w;
        let horizon = w.saturating_sub(keep_ms);
        state.known.retain(|_, &mut (_, stamp)| stamp >= horizon);
        w
    }

    pub fn snapshot(&self) -> Snapshot {
        let state = self.lock();
        Snapshot {
            watermark: state.watermark,
            pending: state.pending.len(),
            writing: state.writing.len(),
            doubtful: state.doubts.len(),
            recovering: state.recovery.is_some() || state.requested.is_some(),
            overflowed: state.overflowed,
        }
    }

    /// Age in milliseconds of the oldest change not yet on Kafka (0 when there is none).
    pub fn lag_millis(&self) -> i64 {
        let now = (self.clock)();
        let state = self.lock();
        let oldest = [
            state.writing.first_key_value().map(|(&(s, _), _)| s),
            state.doubts.first_key_value().map(|(&(s, _), _)| s),
            state.pending.first_key_value().map(|(k, _)| k.stamp),
            // A scan re-reading below the watermark is not lag by itself.
            state
                .recovery
                .iter()
                .chain(state.requested.iter())
                .map(|c| c.millis.max(state.watermark))
                .min(),
        ]
        .into_iter()
        .flatten()
        .min();
        oldest.map_or(0, |s| now.saturating_sub(s).max(0))
    }
}

fn remember(state: &mut State, key: PendingKey) {
    let entry = state.known.entry(key.id).or_insert((0, key.stamp));
    if key.version >= entry.0 {
        *entry = (key.version, key.stamp);
    }
}

#[cfg(test)]
mod tests {
    use mongodb::bson::DateTime;

    use std::sync::atomic::{AtomicI64, Ordering};

    use super::*;

    /// An outbox whose doubts settle at once, on a clock standing at zero (the tests pass the
    /// time to `begin_at` and `watermark_at`).
    fn outbox(max_pending: usize) -> Arc<Outbox> {
        Outbox::with_clock(max_pending, 0, Arc::new(|| 0))
    }

    fn doc(id: u128, version: i64, stamp: i64) -> StoredMessage {
        StoredMessage {
            id: Uuid::from_u128(id).to_string(),
            tenant_id: "t".into(),
            conversation_id: Uuid::from_u128(7).to_string(),
            sender_id: Some(Uuid::from_u128(8).to_string()),
            content: Some("x".into()),
            metadata_json: None,
            timestamp: DateTime::from_millis(stamp),
            updated_at: DateTime::from_millis(stamp),
            version,
            deleted: false,
            deleted_at: None,
            fingerprint: None,
            correlation_id: "corr".into(),
        }
    }

    #[test]
    fn records_carry_key_and_contract_headers() {
        let record = OutboundRecord::of(&doc(1, 2, 5_000)).unwrap();
        assert_eq!(record.key, Uuid::from_u128(7).to_string());
        let names: Vec<&str> = record.headers.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["correlation-id", "message-id", "timestamp"]);
        assert_eq!(
            record.headers[1].1,
            format!("{}:2", Uuid::from_u128(1).hyphenated())
        );
        assert_eq!(record.headers[2].1, "1970-01-01T00:00:05.000Z");
    }

    #[test]
    fn the_watermark_waits_for_writes_in_flight_and_unpublished_records() {
        let outbox = outbox(100);
        assert_eq!(outbox.watermark_at(1_000, 0), 1_000);
        let a = outbox.begin_at(1_010);
        let b = outbox.begin_at(1_020);
        // Clock going backwards: the stamp does not.
        let c = outbox.begin_at(900);
        assert_eq!(c.stamp().timestamp_millis(), 1_020);
        assert_eq!(outbox.watermark_at(1_030, 0), 1_010);
        // B commits first: still bounded by A, in flight.
        outbox.committed(b, &doc(2, 1, 1_020), None);
        assert_eq!(outbox.watermark_at(1_040, 0), 1_010);
        // A wrote nothing; C's outcome is unknown (dropped): a scan from its stamp is needed
        // (at once here: this outbox's doubts settle at once).
        a.not_written();
        drop(c);
        assert_eq!(outbox.watermark_at(1_050, 0), 1_020);
        let cursor = outbox.scan_cursor().unwrap();
        assert_eq!(cursor.millis, 1_020);
        outbox.scanned(&cursor, None, true);
        // B pending still holds the watermark at its stamp.
        assert_eq!(outbox.watermark_at(1_060, 0), 1_020);
        let sent = outbox.take_unsent(10);
        assert_eq!(sent.len(), 1);
        assert!(outbox.take_unsent(10).is_empty(), "sending once");
        outbox.failed(sent[0].0);
        let again = outbox.take_unsent(10);
        assert_eq!(again.len(), 1);
        outbox.published(again[0].0);
        assert!(outbox.is_drained() && !outbox.snapshot().recovering);
        assert_eq!(outbox.watermark_at(1_070, 0), 1_070);
        // Never backwards.
        assert_eq!(outbox.watermark_at(1_000, 0), 1_070);
    }

    #[test]
    fn a_full_outbox_leaves_changes_to_the_scan() {
        let outbox = outbox(1);
        let t1 = outbox.begin_at(10);
        let t2 = outbox.begin_at(20);
        outbox.committed(t1, &doc(1, 1, 10), None);
        outbox.committed(t2, &doc(2, 1, 20), None);
        let snap = outbox.snapshot();
        assert_eq!((snap.pending, snap.overflowed), (1, 1));
        assert_eq!(outbox.watermark_at(30, 1_000), 10);
        // No room to scan until the pending record is published.
        assert!(outbox.scan_cursor().is_none());
        let sent = outbox.take_unsent(5);
        outbox.published(sent[0].0);
        let cursor = outbox.scan_cursor().unwrap();
        assert_eq!((cursor.millis, cursor.id.as_str()), (20, ""));
        assert_eq!(outbox.watermark_at(40, 1_000), 20);
        // The scan finds both: the published one is skipped, the forgotten one queued.
        assert!(!outbox.recovered(&doc(1, 1, 10)).unwrap());
        assert!(outbox.recovered(&doc(2, 1, 20)).unwrap());
        assert!(!outbox.recovered(&doc(2, 1, 20)).unwrap(), "queued once");
        let last = After {
            millis: 20,
            id: Uuid::from_u128(2).to_string(),
        };
        outbox.scanned(&cursor, Some(last.clone()), false);
        assert!(outbox.snapshot().recovering);
        // Memory is full again (one pending): the scan waits.
        assert_eq!(outbox.scan_cursor(), None);
        outbox.scanned(&last, None, true);
        assert!(!outbox.snapshot().recovering);
        assert_eq!(outbox.watermark_at(50, 1_000), 20, "the recovered record");
        let sent = outbox.take_unsent(5);
        outbox.published(sent[0].0);
        assert_eq!(outbox.watermark_at(60, 1_000), 60);
    }

    #[test]
    fn a_newer_version_is_not_skipped_and_an_older_one_is() {
        let outbox = outbox(10);
        let t = outbox.begin_at(100);
        outbox.committed(t, &doc(1, 3, 100), None);
        assert!(!outbox.recovered(&doc(1, 2, 90)).unwrap());
        assert!(!outbox.recovered(&doc(1, 3, 100)).unwrap());
        assert!(outbox.recovered(&doc(1, 4, 110)).unwrap());
    }

    #[test]
    fn an_earlier_scan_request_wins_and_a_scan_below_the_watermark_does_not_lower_it() {
        let outbox = outbox(10);
        assert_eq!(outbox.watermark_at(1_000, 0), 1_000);
        outbox.request_scan(500);
        outbox.request_scan(700);
        let cursor = outbox.scan_cursor().unwrap();
        assert_eq!(cursor.millis, 500);
        assert_eq!(outbox.watermark_at(1_100, 0), 1_000);
        // A page read from 500 while a request for 300 arrived: the earlier cursor stays.
        outbox.request_scan(300);
        outbox.scanned(&cursor, None, true);
        assert_eq!(outbox.scan_cursor().unwrap().millis, 300);
    }

    #[test]
    fn known_versions_are_forgotten_behind_the_watermark() {
        let outbox = outbox(10);
        let t = outbox.begin_at(100);
        outbox.committed(t, &doc(1, 1, 100), None);
        let sent = outbox.take_unsent(1);
        outbox.published(sent[0].0);
        outbox.watermark_at(120, 50);
        assert!(!outbox.recovered(&doc(1, 1, 100)).unwrap(), "kept");
        outbox.watermark_at(1_000, 50);
        assert!(outbox.recovered(&doc(1, 1, 100)).unwrap(), "forgotten");
    }

    #[test]
    fn writes_begin_only_while_the_relay_vouches_for_this_process() {
        let outbox = outbox(10);
        assert_eq!(outbox.begin().unwrap_err(), Unvouched, "not registered yet");
        let now = Instant::now();
        outbox.vouch(now + std::time::Duration::from_secs(15));
        assert!(outbox.begin().is_ok());
        assert!(!outbox.is_vouched(now + std::time::Duration::from_secs(15)));
    }

    #[test]
    fn the_backlog_counts_unpublished_changes_by_age() {
        let outbox = outbox(10);
        assert_eq!(outbox.oldest_pending_stamp(), None);
        for (id, stamp) in [(1, 1_000), (2, 50_000), (3, 95_000), (4, 99_000)] {
            let t = outbox.begin_at(stamp);
            outbox.committed(t, &doc(id, 1, stamp), None);
        }
        // At 100 s: 99 s old (over 1m), 50 s (over 10s), 5 s and 1 s (clear).
        assert_eq!(outbox.pending_by_age(100_000), [2, 1, 1, 0]);
        assert_eq!(outbox.oldest_pending_stamp(), Some(1_000));
        assert!(!outbox.owes_nothing());
        for (key, _) in outbox.take_unsent(10) {
            outbox.published(key);
        }
        assert_eq!(outbox.pending_by_age(100_000), [0; 4]);
        assert!(outbox.owes_nothing());
    }

    /// An outbox whose doubts settle after 100 ms, on a clock the test moves.
    fn clocked(max_pending: usize) -> (Arc<Outbox>, Arc<AtomicI64>) {
        let now = Arc::new(AtomicI64::new(0));
        let clock = Arc::clone(&now);
        let outbox = Outbox::with_clock(
            max_pending,
            100,
            Arc::new(move || clock.load(Ordering::SeqCst)),
        );
        (outbox, now)
    }

    #[test]
    fn a_write_in_doubt_holds_the_watermark_until_it_settles_then_is_scanned_for() {
        let (outbox, now) = clocked(10);
        now.store(1_000, Ordering::SeqCst);
        let t = outbox.begin_at(1_000);
        // The outcome became unknown at 1 050 (an error, a task that never finished): the server
        // may still apply the write, so no scan yet, and the watermark stays at its stamp.
        now.store(1_050, Ordering::SeqCst);
        drop(t);
        assert_eq!(outbox.snapshot().doubtful, 1);
        assert_eq!(outbox.scan_cursor(), None, "not before it settles");
        assert_eq!(outbox.watermark_at(1_149, 0), 1_000);
        assert!(!outbox.owes_nothing());
        assert_eq!(outbox.lag_millis(), 50);
        // 100 ms after the outcome became unknown: the scan looks for it from its stamp.
        now.store(1_150, Ordering::SeqCst);
        let cursor = outbox.scan_cursor().expect("a scan from the stamp");
        assert_eq!((cursor.millis, cursor.id.as_str()), (1_000, ""));
        assert_eq!(outbox.snapshot().doubtful, 0);
        assert_eq!(outbox.watermark_at(1_200, 0), 1_000);
        // The scan finds it: published, the watermark moves on.
        assert!(outbox.recovered(&doc(1, 1, 1_000)).unwrap());
        outbox.scanned(&cursor, None, true);
        for (key, _) in outbox.take_unsent(10) {
            outbox.published(key);
        }
        assert!(outbox.owes_nothing());
        assert_eq!(outbox.watermark_at(1_300, 0), 1_300);
    }

    #[test]
    fn a_scan_asked_for_while_a_page_is_read_is_not_cleared_by_that_page() {
        let (outbox, now) = clocked(10);
        now.store(1_000, Ordering::SeqCst);
        outbox.request_scan(500);
        let page = outbox.scan_cursor().unwrap();
        assert_eq!(page.millis, 500);
        // While the page is read (from before the write at 800 landed), a scan from 800 is
        // asked for: the page's end must not clear it.
        outbox.request_scan(800);
        outbox.scanned(&page, None, true);
        assert!(!outbox.owes_nothing());
        assert_eq!(outbox.watermark_at(1_000, 0), 800);
        let next = outbox
            .scan_cursor()
            .expect("the later request, on its own page");
        assert_eq!(next.millis, 800);
        outbox.scanned(&next, None, true);
        assert!(outbox.owes_nothing());
        assert_eq!(outbox.watermark_at(1_100, 0), 1_100);
    }
}
