//! The circuit breaker's state machine (ARCHITECTURE.md property 5).
//!
//! Owns the decision "may the sink send a bulk request now?" and every transition between
//! `closed`, `open` and `half-open`, each with the reason to log. It is fed whole-request
//! outcomes only (what `classify` calls a breaker failure, or a request that got through); it
//! never sees item-level retries or DLQ decisions. It never reads a clock (`now` is injected),
//! never sleeps, logs, pauses partitions or touches metrics: the caller does that with the
//! [`Transition`] a step returns.
//!
//! Exactly one probe in half-open holds because the consume loop starts a single lane, alone,
//! while the breaker is not closed, and stops every other lane at its next request: the request
//! sent while half-open is the probe, and its outcome leaves half-open.

use std::fmt;
use std::time::{Duration, Instant};

/// `INDEXER_BREAKER_FAILURE_THRESHOLD`, `INDEXER_BREAKER_COOLDOWN_MS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive whole-request failures that open the breaker; 0 is read as 1.
    pub failure_threshold: u32,
    /// How long the breaker stays open before it lets one probe through.
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            cooldown: Duration::from_secs(30),
        }
    }
}

/// The breaker's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Requests flow; counts whole-request failures in a row.
    Closed { consecutive_failures: u32 },
    /// No requests until `cooldown` has passed since `since`.
    Open { since: Instant, reason: String },
    /// The cooldown has passed; the next request is the probe.
    HalfOpen,
}

/// The state without its data (what metrics, the Lease annotation and the operator's status
/// show) is the contract's word for it.
pub use pipeline_contract::worker::BreakerState;

/// What happened since the last step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A bulk request got a response that `classify` does not count against the pipeline.
    Succeeded,
    /// A whole-request failure, with the reason to log and to keep while open.
    Failed { reason: String },
    /// Nothing but time: lets an open breaker notice that its cooldown is over.
    TimePassed,
}

/// A change of phase, for the log line, the metric and the Lease annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
    pub reason: String,
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "breaker {} -> {}: {}", self.from, self.to, self.reason)
    }
}

impl State {
    pub const INITIAL: State = State::Closed {
        consecutive_failures: 0,
    };

    pub fn phase(&self) -> BreakerState {
        match self {
            Self::Closed { .. } => BreakerState::Closed,
            Self::Open { .. } => BreakerState::Open,
            Self::HalfOpen => BreakerState::HalfOpen,
        }
    }

    pub fn as_str(&self) -> &'static str {
        self.phase().as_str()
    }

    /// Whether a request may be sent at `now`. An open breaker whose cooldown is over answers
    /// yes even before a [`Event::TimePassed`] step moved it to half-open, and [`step`] then
    /// treats the outcome of that request as the probe's, so a caller that forgets to tick
    /// cannot stay open forever.
    pub fn allows_request(&self, config: &BreakerConfig, now: Instant) -> bool {
        match self {
            Self::Closed { .. } | Self::HalfOpen => true,
            Self::Open { since, .. } => cooled_down(config, *since, now),
        }
    }
}

impl Default for State {
    fn default() -> Self {
        Self::INITIAL
    }
}

fn cooled_down(config: &BreakerConfig, since: Instant, now: Instant) -> bool {
    now.saturating_duration_since(since) >= config.cooldown
}

/// One step of the machine: the state after `event` at `now`, and the transition if the phase
/// changed (or an open breaker re-opened after a failed probe).
pub fn step(
    config: &BreakerConfig,
    state: &State,
    event: &Event,
    now: Instant,
) -> (State, Option<Transition>) {
    let threshold = config.failure_threshold.max(1);
    let transition = |to: BreakerState, reason: String| Transition {
        from: state.phase(),
        to,
        reason,
    };
    match (state, event) {
        (State::Closed { .. }, Event::Succeeded) => (State::INITIAL, None),
        (
            State::Closed {
                consecutive_failures,
            },
            Event::Failed { reason },
        ) => {
            let failures = consecutive_failures.saturating_add(1);
            if failures >= threshold {
                let why = format!("{failures} consecutive whole-request failures, last: {reason}");
                (
                    State::Open {
                        since: now,
                        reason: reason.clone(),
                    },
                    Some(transition(BreakerState::Open, why)),
                )
            } else {
                (
                    State::Closed {
                        consecutive_failures: failures,
                    },
                    None,
                )
            }
        }
        (State::Closed { .. } | State::HalfOpen, Event::TimePassed) => (state.clone(), None),
        // Before the cooldown, outcomes are of requests sent before the breaker opened: stale,
        // so they neither close it nor extend the cooldown.
        (State::Open { since, .. }, _) if !cooled_down(config, *since, now) => {
            (state.clone(), None)
        }
        (State::Open { .. }, Event::TimePassed) => (
            State::HalfOpen,
            Some(transition(
                BreakerState::HalfOpen,
                format!(
                    "cooldown of {} ms elapsed, letting one probe through",
                    config.cooldown.as_millis()
                ),
            )),
        ),
        (State::Open { .. } | State::HalfOpen, Event::Succeeded) => (
            State::INITIAL,
            Some(transition(
                BreakerState::Closed,
                "probe succeeded".to_owned(),
            )),
        ),
        (State::Open { .. } | State::HalfOpen, Event::Failed { reason }) => (
            State::Open {
                since: now,
                reason: reason.clone(),
            },
            Some(transition(
                BreakerState::Open,
                format!("probe failed: {reason}"),
            )),
        ),
    }
}

/// The machine with its config, for callers that keep one breaker per worker.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    state: State,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: State::INITIAL,
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// `closed`, `open` or `half-open`.
    pub fn as_str(&self) -> &'static str {
        self.state.as_str()
    }

    pub fn allows_request(&self, now: Instant) -> bool {
        self.state.allows_request(&self.config, now)
    }

    /// Applies `event` at `now`; returns the transition to log, if any.
    pub fn record(&mut self, event: &Event, now: Instant) -> Option<Transition> {
        let (next, transition) = step(&self.config, &self.state, event, now);
        self.state = next;
        transition
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: BreakerConfig = BreakerConfig {
        failure_threshold: 3,
        cooldown: Duration::from_secs(10),
    };

    /// An event at a time in seconds after the start of a case.
    type At = (u64, Event);

    fn ok(at: u64) -> At {
        (at, Event::Succeeded)
    }
    fn fail(at: u64) -> At {
        (
            at,
            Event::Failed {
                reason: format!("timeout at {at}"),
            },
        )
    }
    fn tick(at: u64) -> At {
        (at, Event::TimePassed)
    }

    /// Runs the events through `step` and returns the final phase and every transition as
    /// `(from, to)`.
    fn run(events: &[At]) -> (State, Vec<(BreakerState, BreakerState)>) {
        let start = Instant::now();
        let mut state = State::INITIAL;
        let mut transitions = Vec::new();
        for (at, event) in events {
            let (next, t) = step(&CONFIG, &state, event, start + Duration::from_secs(*at));
            if let Some(t) = t {
                assert_eq!(t.from, state.phase(), "{t}");
                assert_eq!(t.to, next.phase(), "{t}");
                transitions.push((t.from, t.to));
            } else {
                assert_eq!(
                    state.phase(),
                    next.phase(),
                    "phase changed without a transition"
                );
            }
            state = next;
        }
        (state, transitions)
    }

    #[test]
    fn sequences_of_events() {
        use BreakerState::{Closed as C, HalfOpen as H, Open as O};
        type Transitions = Vec<(BreakerState, BreakerState)>;
        let cases: Vec<(&str, Vec<At>, BreakerState, Transitions)> = vec![
            ("starts closed", vec![], C, vec![]),
            (
                "failures below the threshold stay closed",
                vec![fail(0), fail(1)],
                C,
                vec![],
            ),
            (
                "a success resets the count",
                vec![fail(0), fail(1), ok(2), fail(3), fail(4)],
                C,
                vec![],
            ),
            (
                "threshold consecutive failures open",
                vec![fail(0), fail(1), fail(2)],
                O,
                vec![(C, O)],
            ),
            (
                "open ignores time before the cooldown",
                vec![fail(0), fail(1), fail(2), tick(5), tick(11)],
                O,
                vec![(C, O)],
            ),
            (
                "stale outcomes while cooling down change nothing",
                vec![fail(0), fail(1), fail(2), ok(3), fail(4), tick(12)],
                H,
                vec![(C, O), (O, H)],
            ),
            (
                "cooldown elapsed lets a probe through",
                vec![fail(0), fail(1), fail(2), tick(12)],
                H,
                vec![(C, O), (O, H)],
            ),
            (
                "probe success closes",
                vec![fail(0), fail(1), fail(2), tick(12), ok(13)],
                C,
                vec![(C, O), (O, H), (H, C)],
            ),
            (
                "probe failure re-opens with a fresh since",
                vec![
                    fail(0),
                    fail(1),
                    fail(2),
                    tick(12),
                    fail(13),
                    tick(20),
                    tick(23),
                ],
                H,
                vec![(C, O), (O, H), (H, O), (O, H)],
            ),
            (
                "half-open ignores time",
                vec![fail(0), fail(1), fail(2), tick(12), tick(100)],
                H,
                vec![(C, O), (O, H)],
            ),
            (
                "an unticked open breaker treats the next outcome as the probe",
                vec![fail(0), fail(1), fail(2), ok(12)],
                C,
                vec![(C, O), (O, C)],
            ),
            (
                "an unticked failed probe re-opens with a fresh since",
                vec![fail(0), fail(1), fail(2), fail(12), tick(21), ok(21)],
                O,
                vec![(C, O), (O, O)],
            ),
            (
                "closed after a probe needs the full threshold again",
                vec![
                    fail(0),
                    fail(1),
                    fail(2),
                    tick(12),
                    ok(13),
                    fail(14),
                    fail(15),
                ],
                C,
                vec![(C, O), (O, H), (H, C)],
            ),
        ];
        for (name, events, phase, transitions) in cases {
            let (state, got) = run(&events);
            assert_eq!(state.phase(), phase, "{name}");
            assert_eq!(got, transitions, "{name}");
        }
    }

    #[test]
    fn open_keeps_the_reason_of_the_last_failure() {
        // Re-opened at 13, so still open at 22 (a `since` of 2 would be half-open by then).
        let (state, _) = run(&[fail(0), fail(1), fail(2), tick(12), fail(13), tick(22)]);
        let State::Open { reason, .. } = &state else {
            panic!("{state:?}")
        };
        assert_eq!(reason, "timeout at 13");
    }

    #[test]
    fn transitions_say_why() {
        let start = Instant::now();
        let at = |s| start + Duration::from_secs(s);
        let mut b = Breaker::new(CONFIG);
        let mut log = Vec::new();
        for (s, e) in [
            fail(0),
            fail(1),
            fail(2),
            tick(12),
            fail(13),
            tick(23),
            ok(24),
        ] {
            log.extend(b.record(&e, at(s)).map(|t| t.to_string()));
        }
        assert_eq!(
            log,
            [
                "breaker closed -> open: 3 consecutive whole-request failures, last: timeout at 2",
                "breaker open -> half-open: cooldown of 10000 ms elapsed, letting one probe through",
                "breaker half-open -> open: probe failed: timeout at 13",
                "breaker open -> half-open: cooldown of 10000 ms elapsed, letting one probe through",
                "breaker half-open -> closed: probe succeeded",
            ]
        );
    }

    #[test]
    fn allows_request_per_state() {
        let start = Instant::now();
        let open = State::Open {
            since: start,
            reason: "x".into(),
        };
        let cases = [
            (State::INITIAL, 0, true),
            (
                State::Closed {
                    consecutive_failures: 2,
                },
                0,
                true,
            ),
            (open.clone(), 0, false),
            (open.clone(), 9, false),
            (open.clone(), 10, true),
            (State::HalfOpen, 0, true),
        ];
        for (state, secs, allowed) in cases {
            assert_eq!(
                state.allows_request(&CONFIG, start + Duration::from_secs(secs)),
                allowed,
                "{state:?} at {secs}s"
            );
        }
    }

    #[test]
    fn threshold_zero_opens_on_the_first_failure() {
        let config = BreakerConfig {
            failure_threshold: 0,
            ..CONFIG
        };
        let (state, t) = step(
            &config,
            &State::INITIAL,
            &Event::Failed { reason: "x".into() },
            Instant::now(),
        );
        assert_eq!(state.phase(), BreakerState::Open);
        assert!(t.is_some());
    }

    #[test]
    fn a_new_breaker_is_closed() {
        assert_eq!(Breaker::new(CONFIG).as_str(), "closed");
    }
}
