//! The outbox's books against a model of everything around them.
//!
//! Each run draws a random interleaving of: writes (created and changed messages, some answered,
//! some whose outcome the writer never learns and that the server applies before or after the
//! writer gave up, some never applied), scan pages read while other writes land, deliveries
//! that fail while Kafka is away, heartbeats that persist the watermark, and crashes of the
//! process, after which its restart adopts the dead registration the way the relay does (scan
//! from its watermark minus the overlap; adopted once that scan ended and nothing at or below
//! what it read waits for Kafka). Then everything is let settle, and each message's highest
//! version on Kafka must equal its version in MongoDB.
//!
//! The model holds what the design assumes and no more: a write is applied by the server, if at
//! all, within [`MAX_WRITE`] of its stamp (ARCHITECTURE.md, Relay: "a MongoDB write is not in
//! flight for longer than …"); the overlap, which is also the time a doubt takes to settle, is
//! longer than that; a crashed process's restart takes longer than that too.
//!
//! A failing run prints its seed and the end of its trace; `RELAY_MODEL_SEED=<n>` replays one
//! seed, `RELAY_MODEL_RUNS=<n>` runs more seeds than the default.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};

use mongodb::bson::DateTime;

use super::*;

/// The relay's overlap, and the time a write in doubt takes to settle.
const OVERLAP: i64 = 3_000;
/// The longest a write stays in flight at the server after its stamp.
const MAX_WRITE: i64 = 2_000;
/// Documents per scan page (small, so scans take several pages).
const PAGE: usize = 3;
/// Actions of a run before it is let settle.
const ACTIONS: usize = 400;
/// Seeds run by default.
const RUNS: u64 = 300;

/// SplitMix64: small, seedable, good enough to draw interleavings.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// In `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// In `0..n`, as milliseconds.
    fn millis(&mut self, n: i64) -> i64 {
        i64::try_from(self.below(u64::try_from(n).unwrap_or(1))).unwrap_or(0)
    }

    /// True `percent` times in a hundred.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A message document as the model's MongoDB holds it.
#[derive(Debug, Clone, Copy)]
struct Doc {
    version: u64,
    updated_at: i64,
    deleted: bool,
}

fn stored(id: Uuid, doc: Doc) -> StoredMessage {
    StoredMessage {
        id: id.to_string(),
        tenant_id: "t".into(),
        conversation_id: Uuid::from_u128(7).to_string(),
        sender_id: (!doc.deleted).then(|| Uuid::from_u128(8).to_string()),
        content: (!doc.deleted).then(|| "x".into()),
        metadata_json: None,
        timestamp: DateTime::from_millis(0),
        updated_at: DateTime::from_millis(doc.updated_at),
        version: i64::try_from(doc.version).unwrap_or(i64::MAX),
        deleted: doc.deleted,
        deleted_at: doc.deleted.then(|| DateTime::from_millis(doc.updated_at)),
        fingerprint: None,
        correlation_id: "c".into(),
    }
}

/// A write as the server and its writer see it.
#[derive(Debug)]
struct Write {
    id: Uuid,
    /// The version it is conditional on (`None`: a create, the id must be free).
    expected: Option<u64>,
    doc: Doc,
    /// When the server applies it, if it still matches (`None`: never sent).
    lands_at: Option<i64>,
    /// Whether it was applied, once it landed.
    applied: Option<bool>,
    /// When its writer learns the outcome, and whether it learns it at all.
    answers_at: i64,
    known: bool,
    /// The writer's ticket; gone once answered, or when its process crashed.
    ticket: Option<Ticket>,
    /// The process that took it (writes of the live process on one id wait for each other).
    epoch: usize,
}

/// A scan page being read: what the read saw, and whose scan it is.
#[derive(Debug)]
struct Page {
    cursor: After,
    docs: Vec<StoredMessage>,
    adoption: bool,
}

#[derive(Debug)]
struct Adoption {
    registrations: Vec<usize>,
    cursor: After,
    complete: bool,
    scanned_to: i64,
}

#[derive(Debug)]
struct Registration {
    watermark: i64,
    live: bool,
    adopted: bool,
}

/// The live process: its outbox and what its relay has under way.
#[derive(Debug)]
struct Process {
    outbox: Arc<Outbox>,
    epoch: usize,
    registration: usize,
    /// Records handed to the producer: (key, when the answer comes).
    sending: Vec<(PendingKey, i64)>,
    page: Option<Page>,
    adoption: Option<Adoption>,
}

/// What a run draws once: how often writes end in doubt, how much the outbox holds.
#[derive(Debug, Clone, Copy)]
struct Mix {
    unknown_percent: u64,
    max_pending: usize,
}

struct World {
    rng: Rng,
    mix: Mix,
    clock: Arc<AtomicI64>,
    mongo: BTreeMap<Uuid, Doc>,
    kafka: HashMap<Uuid, u64>,
    kafka_up: bool,
    writes: Vec<Write>,
    process: Option<Process>,
    epochs: usize,
    restart_at: i64,
    registrations: Vec<Registration>,
    next_id: u128,
    trace: Vec<String>,
}

impl World {
    fn new(seed: u64) -> Self {
        let mut rng = Rng(seed);
        let mix = Mix {
            unknown_percent: [0, 3, 15][usize::try_from(rng.below(3)).unwrap_or(0)],
            max_pending: [4, 8, 64][usize::try_from(rng.below(3)).unwrap_or(0)],
        };
        let mut world = Self {
            rng,
            mix,
            clock: Arc::new(AtomicI64::new(1_000_000)),
            mongo: BTreeMap::new(),
            kafka: HashMap::new(),
            kafka_up: true,
            writes: Vec::new(),
            process: None,
            epochs: 0,
            restart_at: 0,
            registrations: Vec::new(),
            next_id: 1,
            trace: Vec::new(),
        };
        world.start();
        world
    }

    fn now(&self) -> i64 {
        self.clock.load(Ordering::SeqCst)
    }

    fn log(&mut self, what: String) {
        let line = format!("{:>8} {what}", self.now() - 1_000_000);
        self.trace.push(line);
    }

    /// A process starts: a registration of its own, and the adoption of every dead one.
    fn start(&mut self) {
        let clock = Arc::clone(&self.clock);
        let outbox = Outbox::with_clock(
            self.mix.max_pending,
            OVERLAP,
            Arc::new(move || clock.load(Ordering::SeqCst)),
        );
        let registration = self.registrations.len();
        self.registrations.push(Registration {
            watermark: self.now(),
            live: true,
            adopted: false,
        });
        let dead: Vec<usize> = (0..registration)
            .filter(|&r| !self.registrations[r].live && !self.registrations[r].adopted)
            .collect();
        let adoption = dead
            .iter()
            .map(|&r| self.registrations[r].watermark)
            .min()
            .map(|from| {
                let from = from - OVERLAP;
                Adoption {
                    registrations: dead.clone(),
                    cursor: After {
                        millis: from,
                        id: String::new(),
                    },
                    complete: false,
                    scanned_to: from,
                }
            });
        self.epochs += 1;
        self.process = Some(Process {
            outbox,
            epoch: self.epochs,
            registration,
            sending: Vec::new(),
            page: None,
            adoption,
        });
        self.log(format!(
            "start epoch {} adopting {dead:?} ({:?})",
            self.epochs, self.mix
        ));
    }

    /// What happens on its own by now: writes land and are answered, deliveries come back.
    fn events(&mut self) {
        let now = self.now();
        for i in 0..self.writes.len() {
            let w = &self.writes[i];
            if w.applied.is_none() && w.lands_at.is_some_and(|t| t <= now) {
                let current = self.mongo.get(&w.id).map(|d| d.version);
                let applies = current == w.expected;
                let (id, doc) = (w.id, w.doc);
                self.writes[i].applied = Some(applies);
                if applies {
                    self.mongo.insert(id, doc);
                }
                self.log(format!("land {id} v{} applied={applies}", doc.version));
            }
        }
        for i in 0..self.writes.len() {
            let w = &mut self.writes[i];
            let answerable = w.answers_at <= now && (!w.known || w.applied.is_some());
            if !answerable {
                continue;
            }
            let Some(ticket) = w.ticket.take() else {
                continue;
            };
            let (id, doc, known, applied) = (w.id, w.doc, w.known, w.applied);
            let Some(process) = self.process.as_ref() else {
                continue;
            };
            match (known, applied) {
                (true, Some(true)) => process.outbox.committed(ticket, &stored(id, doc), None),
                (true, _) => ticket.not_written(),
                (false, _) => drop(ticket),
            }
            self.log(format!("answer {id} v{} known={known}", doc.version));
        }
        let Some(process) = self.process.as_mut() else {
            return;
        };
        let (due, later): (Vec<_>, Vec<_>) = process.sending.drain(..).partition(|s| s.1 <= now);
        process.sending = later;
        for (key, _) in due {
            if self.kafka_up {
                process.outbox.published(key);
                let v = self.kafka.entry(key.id).or_insert(0);
                *v = (*v).max(key.version);
            } else {
                process.outbox.failed(key);
            }
        }
    }

    /// A new write by the live process: a create, or a change of a message it may write.
    fn write(&mut self) {
        let Some(process) = self.process.as_ref() else {
            return;
        };
        let epoch = process.epoch;
        let busy = |id: &Uuid, writes: &[Write]| {
            writes
                .iter()
                .any(|w| w.id == *id && w.epoch == epoch && w.ticket.is_some())
        };
        let existing: Vec<Uuid> = self
            .mongo
            .iter()
            .filter(|(id, d)| !d.deleted && !busy(id, &self.writes))
            .map(|(id, _)| *id)
            .collect();
        let (id, expected) = if existing.is_empty() || self.rng.chance(40) {
            self.next_id += 1;
            (Uuid::from_u128(self.next_id), None)
        } else {
            let id = existing[usize::try_from(self.rng.below(existing.len() as u64)).unwrap_or(0)];
            (id, self.mongo.get(&id).map(|d| d.version))
        };
        let ticket = process.outbox.begin_at(self.now());
        let stamp = ticket.stamp().timestamp_millis();
        let doc = Doc {
            version: expected.map_or(1, |v| v + 1),
            updated_at: stamp,
            deleted: expected.is_some() && self.rng.chance(20),
        };
        let known = !self.rng.chance(self.mix.unknown_percent);
        let (lands_at, answers_at) = if known {
            let lands = stamp + self.rng.millis(MAX_WRITE);
            (
                Some(lands),
                (lands + self.rng.millis(200)).min(stamp + MAX_WRITE),
            )
        } else {
            // The writer gives up (an error, a task that never finished) at some point; the
            // server applies the write before or after that, or never got it.
            let lands = (!self.rng.chance(30)).then(|| stamp + self.rng.millis(MAX_WRITE));
            (lands, stamp + self.rng.millis(MAX_WRITE))
        };
        self.log(format!(
            "write {id} v{} stamp {} lands {lands_at:?} answers {answers_at} known={known}",
            doc.version,
            stamp - 1_000_000
        ));
        self.writes.push(Write {
            id,
            expected,
            doc,
            lands_at,
            applied: None,
            answers_at,
            known,
            ticket: Some(ticket),
            epoch,
        });
    }

    /// The relay hands some unsent records to the producer.
    fn hand_over(&mut self) {
        let n = usize::try_from(1 + self.rng.below(6)).unwrap_or(1);
        let delay = 1 + self.rng.millis(80);
        let now = self.now();
        if let Some(process) = self.process.as_mut() {
            for (key, _) in process.outbox.take_unsent(n) {
                process.sending.push((key, now + delay));
            }
        }
    }

    /// What a scan page from `cursor` reads now.
    fn read(&self, cursor: &After) -> Vec<StoredMessage> {
        let mut docs: Vec<(i64, String, StoredMessage)> = self
            .mongo
            .iter()
            .map(|(id, d)| (d.updated_at, id.to_string(), stored(*id, *d)))
            .filter(|(t, id, _)| (*t, id.as_str()) > (cursor.millis, cursor.id.as_str()))
            .collect();
        docs.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        docs.into_iter().take(PAGE).map(|(_, _, d)| d).collect()
    }

    /// The relay starts reading a page of its scan, or of the adoption, when one is wanted.
    fn scan_start(&mut self) {
        let Some(process) = self.process.as_ref() else {
            return;
        };
        if process.page.is_some() {
            return;
        }
        let (cursor, adoption) = match process.outbox.scan_cursor() {
            Some(cursor) => (cursor, false),
            None => match process.adoption.as_ref().filter(|a| !a.complete) {
                Some(a) if process.outbox.has_room_for_scan() => (a.cursor.clone(), true),
                _ => return,
            },
        };
        let docs = self.read(&cursor);
        self.log(format!(
            "page from {} adoption={adoption}: {} docs",
            cursor.millis - 1_000_000,
            docs.len()
        ));
        if let Some(process) = self.process.as_mut() {
            process.page = Some(Page {
                cursor,
                docs,
                adoption,
            });
        }
    }

    /// The page read earlier is taken in.
    fn scan_end(&mut self) {
        let Some(process) = self.process.as_mut() else {
            return;
        };
        let Some(page) = process.page.take() else {
            return;
        };
        for doc in &page.docs {
            process.outbox.recovered(doc).expect("a valid document");
        }
        let complete = page.docs.len() < PAGE;
        let last = page.docs.last().map(|d| After {
            millis: d.updated_at.timestamp_millis(),
            id: d.id.clone(),
        });
        if page.adoption {
            if let Some(a) = process.adoption.as_mut() {
                if let Some(last) = last {
                    a.scanned_to = a.scanned_to.max(last.millis);
                    a.cursor = last;
                }
                a.complete = complete;
            }
        } else {
            process.outbox.scanned(&page.cursor, last, complete);
        }
    }

    /// Once a second in the relay: the watermark persisted, an adoption that is done marked.
    fn heartbeat(&mut self) {
        let Some(process) = self.process.as_mut() else {
            return;
        };
        let watermark = process.outbox.watermark(2 * OVERLAP);
        self.registrations[process.registration].watermark = watermark;
        let done = process.adoption.as_ref().is_some_and(|a| {
            a.complete
                && process
                    .outbox
                    .oldest_pending_stamp()
                    .is_none_or(|s| s > a.scanned_to)
        });
        if done && let Some(a) = process.adoption.take() {
            for r in &a.registrations {
                self.registrations[*r].adopted = true;
            }
            self.log(format!("adopted {:?}", a.registrations));
        }
    }

    /// The process dies: its memory is gone; the server still applies what it was sent.
    fn crash(&mut self) {
        let Some(process) = self.process.take() else {
            return;
        };
        for (key, _) in &process.sending {
            // A record in flight may or may not have reached Kafka.
            if self.kafka_up && self.rng.chance(50) {
                let v = self.kafka.entry(key.id).or_insert(0);
                *v = (*v).max(key.version);
            }
        }
        for w in &mut self.writes {
            if w.epoch == process.epoch {
                w.ticket = None;
            }
        }
        self.registrations[process.registration].live = false;
        self.restart_at = self.now() + MAX_WRITE + self.rng.millis(1_000);
        self.log(format!("crash epoch {}", process.epoch));
    }

    fn act(&mut self, writing: bool) {
        let roll = self.rng.below(100);
        match roll {
            0..=29 if writing => self.write(),
            30..=49 => self.hand_over(),
            50..=61 => self.scan_start(),
            // A page takes a while to read: writes land and scans are asked for meanwhile.
            62..=65 => self.scan_end(),
            66..=77 => self.heartbeat(),
            86..=88 if writing => {
                self.kafka_up = !self.kafka_up;
                let up = self.kafka_up;
                self.log(format!("kafka up={up}"));
            }
            89 if writing => self.crash(),
            _ => {}
        }
        if self.process.is_none() && self.now() >= self.restart_at {
            self.start();
        }
    }

    fn tick(&mut self) {
        let step = self.rng.millis(40);
        self.clock.fetch_add(step, Ordering::SeqCst);
        self.events();
    }

    /// Nothing left to happen: every write landed and answered, everything published, every
    /// dead registration adopted.
    fn settled(&self) -> bool {
        let writes_done = self
            .writes
            .iter()
            .all(|w| w.ticket.is_none() && (w.applied.is_some() || w.lands_at.is_none()));
        let relay_done = self.process.as_ref().is_some_and(|p| {
            p.outbox.owes_nothing()
                && p.sending.is_empty()
                && p.page.is_none()
                && p.adoption.is_none()
        });
        let adopted = self.registrations.iter().all(|r| r.live || r.adopted);
        writes_done && relay_done && adopted
    }

    /// Every message's highest version on Kafka against its version in MongoDB.
    fn lost(&self) -> Vec<String> {
        self.mongo
            .iter()
            .filter(|(id, d)| self.kafka.get(id) != Some(&d.version))
            .map(|(id, d)| {
                format!(
                    "{id}: v{} (stamp {}) in MongoDB, {:?} on Kafka",
                    d.version,
                    d.updated_at - 1_000_000,
                    self.kafka.get(id)
                )
            })
            .collect()
    }
}

/// One run; `Err` says what went wrong, with the trace's end.
fn run(seed: u64) -> Result<usize, String> {
    let mut world = World::new(seed);
    for _ in 0..ACTIONS {
        world.tick();
        world.act(true);
    }
    world.kafka_up = true;
    let mut steps = 0;
    while !world.settled() {
        steps += 1;
        if steps > 50_000 {
            return Err(format!(
                "did not settle\n{}",
                world.trace[world.trace.len().saturating_sub(40)..].join("\n")
            ));
        }
        world.tick();
        world.act(false);
    }
    let lost = world.lost();
    if lost.is_empty() {
        Ok(world.mongo.len())
    } else {
        Err(format!(
            "{} of {} messages not on Kafka at their version:\n{}\ntrace (end):\n{}",
            lost.len(),
            world.mongo.len(),
            lost.join("\n"),
            world.trace[world.trace.len().saturating_sub(60)..].join("\n")
        ))
    }
}

#[test]
fn every_change_mongodb_holds_reaches_kafka_at_its_version_whatever_the_interleaving() {
    let seeds: Vec<u64> = match std::env::var("RELAY_MODEL_SEED") {
        Ok(seed) => vec![seed.parse().expect("RELAY_MODEL_SEED is a number")],
        Err(_) => {
            let runs = std::env::var("RELAY_MODEL_RUNS")
                .ok()
                .and_then(|r| r.parse().ok())
                .unwrap_or(RUNS);
            // A different stretch of seeds each day, the same within one.
            let base = u64::try_from(chrono::Utc::now().timestamp() / 86_400).unwrap_or(0) << 20;
            (base..base + runs).collect()
        }
    };
    let mut messages = 0;
    for seed in seeds {
        match run(seed) {
            Ok(n) => messages += n,
            Err(why) => panic!("seed {seed} (replay: RELAY_MODEL_SEED={seed}): {why}"),
        }
    }
    assert!(messages > 0, "the runs wrote nothing");
}
