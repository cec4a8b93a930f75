//! Which api-server replica answers for which unpublished changes, and which dead replicas this
//! process adopts (ARCHITECTURE.md, Relay).
//!
//! Every api-server process registers itself in `<collection>_relay` under an id of its own,
//! random per process (a restarted or replaced pod is a new registration), carrying its
//! watermark and a heartbeat counter it bumps about once a second. A registration's watermark is
//! in its owner's clock and bounds every change that owner acknowledged and has not seen on Kafka.
//!
//! A peer is presumed dead when its heartbeat has not moved for `expiry`, measured on this
//! process's monotonic clock (no clocks of two machines are ever compared), or at first sight
//! when it carries this process's pod name (a container restarted in its pod: the old one is
//! gone). A dead peer's changes are adopted: the relay scans MongoDB from its watermark minus the
//! overlap and publishes what it finds; only once that scan is complete and everything it found
//! is on Kafka is the registration marked adopted, so a relay that dies mid-adoption leaves the
//! registration for the next survivor. An adopted registration whose heartbeat has not moved for
//! `retain` is deleted. Presuming a live peer dead costs a scan and duplicate records (same
//! `message-id`, external versions), never a change: its next heartbeat clears the mark.
//!
//! Pure: the relay reads the registrations and passes them in with the time; this module only
//! decides (table-tested below), the relay carries the plan out.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// One registration as stored. A document written by api-servers before per-replica
/// registrations (`_id: "watermark"`, only `millis`) reads as one with no heartbeat: it is
/// adopted like any other once its watermark stops moving.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Registration {
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(default)]
    pub pod: Option<String>,
    #[serde(default)]
    pub topic: Option<String>,
    /// The owner's watermark (milliseconds, the owner's clock).
    pub millis: i64,
    /// Bumped by the owner on every heartbeat; `None` for the older shared watermark.
    #[serde(default)]
    pub beat: Option<i64>,
    #[serde(default)]
    pub adopted: bool,
    /// A survivor that started adopting it.
    #[serde(default)]
    pub claimed_by: Option<String>,
}

impl Registration {
    /// What moves while the owner lives: its heartbeat, or the older shared watermark's value.
    pub fn pulse(&self) -> Pulse {
        match self.beat {
            Some(beat) => Pulse::Beat(beat),
            None => Pulse::Legacy(self.millis),
        }
    }
}

/// See [`Registration::pulse`]; the store makes its write conditions from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pulse {
    Beat(i64),
    Legacy(i64),
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    pulse: Pulse,
    /// When the pulse last changed (or was first seen).
    since: Instant,
    /// Whether it has changed while this process watched.
    moved: bool,
}

/// What to do after one look at the registrations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Dead, not adopted, and not being adopted by a live peer: this process adopts them.
    pub adopt: Vec<Registration>,
    /// Adopted, and silent for `retain`: delete them (id and the pulse the delete is
    /// conditional on).
    pub forget: Vec<(String, Pulse)>,
    /// Dead and not adopted yet (by anyone), and the oldest of their watermarks: changes that
    /// may be acknowledged and not on Kafka, for the lag and the backlog annotation.
    pub orphans: usize,
    pub oldest_orphan_millis: Option<i64>,
    /// Live peers that relay to another topic (a topic change being rolled out, or a mistake).
    pub other_topics: Vec<(String, String)>,
    /// An older api-server is still raising the shared watermark: its relay can lose changes
    /// if it dies while Kafka is away (finish the rolling update).
    pub legacy_writer: bool,
    /// A live peer uses this process's pod name.
    pub same_pod_peer: bool,
}

/// This process's view of its peers.
#[derive(Debug)]
pub struct Peers {
    me: String,
    pod: String,
    expiry: Duration,
    retain: Duration,
    seen: HashMap<String, Seen>,
}

impl Peers {
    pub fn new(me: impl Into<String>, pod: impl Into<String>, expiry: Duration) -> Self {
        Self {
            me: me.into(),
            pod: pod.into(),
            expiry,
            retain: expiry * 20,
            seen: HashMap::new(),
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// One look at every registration at `now`.
    pub fn observe(
        &mut self,
        registrations: &[Registration],
        my_topic: &str,
        now: Instant,
    ) -> Plan {
        let present: HashSet<&str> = registrations.iter().map(|r| r.id.as_str()).collect();
        self.seen.retain(|id, _| present.contains(id.as_str()));
        let mut dead: HashMap<&str, Seen> = HashMap::new();
        let mut plan = Plan::default();
        for r in registrations.iter().filter(|r| r.id != self.me) {
            let pulse = r.pulse();
            let seen = self
                .seen
                .entry(r.id.clone())
                .and_modify(|s| {
                    if s.pulse != pulse {
                        *s = Seen {
                            pulse,
                            since: now,
                            moved: true,
                        };
                    }
                })
                .or_insert(Seen {
                    pulse,
                    since: now,
                    moved: false,
                });
            let same_pod = r.pod.as_deref() == Some(self.pod.as_str());
            let silent = now.saturating_duration_since(seen.since);
            if (same_pod && !seen.moved) || silent >= self.expiry {
                dead.insert(r.id.as_str(), *seen);
                continue;
            }
            // Alive.
            if same_pod {
                plan.same_pod_peer = true;
            }
            if r.beat.is_none() && seen.moved {
                plan.legacy_writer = true;
            }
            if let Some(topic) = r.topic.as_deref().filter(|t| *t != my_topic) {
                plan.other_topics.push((
                    r.pod.clone().unwrap_or_else(|| r.id.clone()),
                    topic.to_owned(),
                ));
            }
        }
        for r in registrations.iter() {
            let Some(seen) = dead.get(r.id.as_str()) else {
                continue;
            };
            if r.adopted {
                if now.saturating_duration_since(seen.since) >= self.retain {
                    plan.forget.push((r.id.clone(), seen.pulse));
                }
                continue;
            }
            plan.orphans += 1;
            plan.oldest_orphan_millis = Some(
                plan.oldest_orphan_millis
                    .map_or(r.millis, |m| m.min(r.millis)),
            );
            let claimed_by_live_peer = r
                .claimed_by
                .as_deref()
                .is_some_and(|c| c != self.me && present.contains(c) && !dead.contains_key(c));
            if !claimed_by_live_peer {
                plan.adopt.push(r.clone());
            }
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPIRY: Duration = Duration::from_secs(30);

    fn reg(id: &str, pod: &str, millis: i64, beat: i64) -> Registration {
        Registration {
            id: id.into(),
            pod: Some(pod.into()),
            topic: Some("events".into()),
            millis,
            beat: Some(beat),
            adopted: false,
            claimed_by: None,
        }
    }

    fn ids(plan: &Plan) -> Vec<&str> {
        plan.adopt.iter().map(|r| r.id.as_str()).collect()
    }

    #[test]
    fn a_peer_whose_heartbeat_stops_is_adopted_after_the_expiry_on_our_clock() {
        let t0 = Instant::now();
        let mut peers = Peers::new("me", "api-0", EXPIRY);
        let me = reg("me", "api-0", 500, 1);
        // Alive while its beat moves, however old its watermark (Kafka may be away).
        for (i, beat) in (1..=40).enumerate() {
            let now = t0 + Duration::from_secs(i as u64);
            let plan = peers.observe(&[me.clone(), reg("b", "api-1", 100, beat)], "events", now);
            assert_eq!(plan, Plan::default(), "second {i}");
        }
        // Silent: still alive just before the expiry, dead at it.
        let b = reg("b", "api-1", 100, 40);
        let last_move = t0 + Duration::from_secs(39);
        let plan = peers.observe(
            &[me.clone(), b.clone()],
            "events",
            last_move + EXPIRY - Duration::from_millis(1),
        );
        assert!(plan.adopt.is_empty());
        let plan = peers.observe(&[me, b], "events", last_move + EXPIRY);
        assert_eq!(ids(&plan), ["b"]);
        assert_eq!((plan.orphans, plan.oldest_orphan_millis), (1, Some(100)));
    }

    #[test]
    fn a_previous_incarnation_in_our_pod_is_adopted_at_once_but_a_live_namesake_is_not() {
        let t0 = Instant::now();
        let mut peers = Peers::new("me", "api-0", EXPIRY);
        let old = reg("old", "api-0", 100, 7);
        let plan = peers.observe(&[reg("me", "api-0", 900, 1), old.clone()], "events", t0);
        assert_eq!(ids(&plan), ["old"]);
        // A misconfigured live duplicate: once its beat moves it is alive, and reported.
        let plan = peers.observe(
            &[reg("old", "api-0", 100, 8)],
            "events",
            t0 + Duration::from_secs(1),
        );
        assert!(plan.adopt.is_empty());
        assert!(plan.same_pod_peer);
    }

    #[test]
    fn adopted_registrations_are_not_adopted_again_and_are_forgotten_after_retain() {
        let t0 = Instant::now();
        let mut peers = Peers::new("me", "api-0", EXPIRY);
        let mut b = reg("b", "api-1", 100, 3);
        b.adopted = true;
        let plan = peers.observe(std::slice::from_ref(&b), "events", t0);
        assert_eq!(plan, Plan::default());
        let plan = peers.observe(std::slice::from_ref(&b), "events", t0 + EXPIRY);
        assert!(plan.adopt.is_empty());
        assert_eq!(plan.orphans, 0, "adopted: its changes are on Kafka");
        assert!(plan.forget.is_empty());
        let plan = peers.observe(std::slice::from_ref(&b), "events", t0 + EXPIRY * 20);
        assert_eq!(plan.forget, [("b".to_owned(), Pulse::Beat(3))]);
    }

    #[test]
    fn an_orphan_claimed_by_a_live_peer_is_left_to_it_and_taken_over_when_that_peer_dies() {
        let t0 = Instant::now();
        let mut peers = Peers::new("me", "api-0", EXPIRY);
        let mut dead = reg("dead", "api-9", 100, 5);
        dead.claimed_by = Some("c".into());
        let c = |beat| reg("c", "api-2", 2_000, beat);
        peers.observe(&[dead.clone(), c(1)], "events", t0);
        let plan = peers.observe(&[dead.clone(), c(2)], "events", t0 + EXPIRY);
        assert!(plan.adopt.is_empty(), "c is adopting it");
        assert_eq!(plan.orphans, 1, "still counted until it is adopted");
        // c dies too: both are ours.
        let plan = peers.observe(&[dead, c(2)], "events", t0 + EXPIRY * 2);
        let mut adopted = ids(&plan);
        adopted.sort_unstable();
        assert_eq!(adopted, ["c", "dead"]);
        assert_eq!(plan.oldest_orphan_millis, Some(100));
    }

    #[test]
    fn the_older_shared_watermark_is_adopted_once_it_stops_moving_and_reported_while_it_moves() {
        let t0 = Instant::now();
        let mut peers = Peers::new("me", "api-0", EXPIRY);
        let legacy = |millis| Registration {
            id: "watermark".into(),
            pod: None,
            topic: None,
            millis,
            beat: None,
            adopted: false,
            claimed_by: None,
        };
        assert!(!peers.observe(&[legacy(100)], "events", t0).legacy_writer);
        let plan = peers.observe(&[legacy(200)], "events", t0 + Duration::from_secs(1));
        assert!(plan.legacy_writer && plan.adopt.is_empty());
        let plan = peers.observe(
            &[legacy(200)],
            "events",
            t0 + Duration::from_secs(1) + EXPIRY,
        );
        assert_eq!(ids(&plan), ["watermark"]);
        assert_eq!(plan.adopt[0].pulse(), Pulse::Legacy(200));
    }

    #[test]
    fn live_peers_on_another_topic_are_reported() {
        let mut peers = Peers::new("me", "api-0", EXPIRY);
        let mut b = reg("b", "api-1", 100, 1);
        b.topic = Some("events-v2".into());
        let plan = peers.observe(&[b], "events", Instant::now());
        assert_eq!(
            plan.other_topics,
            [("api-1".to_owned(), "events-v2".to_owned())]
        );
    }

    #[test]
    fn registrations_that_disappeared_are_forgotten_and_start_over_if_they_return() {
        let t0 = Instant::now();
        let mut peers = Peers::new("me", "api-0", EXPIRY);
        peers.observe(&[reg("b", "api-1", 100, 1)], "events", t0);
        peers.observe(&[], "events", t0 + EXPIRY);
        let plan = peers.observe(&[reg("b", "api-1", 100, 1)], "events", t0 + EXPIRY);
        assert!(
            plan.adopt.is_empty(),
            "seen anew: the expiry counts from now"
        );
    }
}
