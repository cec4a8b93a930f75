//! The circuit breaker as the running indexer shares it: the consume loop and its lanes ask it
//! whether a request may go, feed it what happened, and the worker Lease reads its state.
//!
//! The state machine itself is [`crate::breaker`] (pure); this wraps it in a lock held only for
//! a check or a step, never across an await, and turns each transition into its log line and
//! metric.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::breaker::{Breaker, BreakerConfig, BreakerState, Event};
use crate::metrics::Metrics;

pub struct Gate {
    breaker: Mutex<Breaker>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl Gate {
    pub fn new(config: BreakerConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            breaker: Mutex::new(Breaker::new(config)),
            metrics,
        }
    }

    fn breaker(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().expect("breaker")
    }

    /// The breaker's state now (for the Lease annotation).
    pub fn state(&self) -> BreakerState {
        self.breaker().state().phase()
    }

    pub fn is_closed(&self) -> bool {
        self.state() == BreakerState::Closed
    }

    /// Feeds `event` to the breaker; a transition is logged and shown in the state metric.
    pub fn record(&self, event: &Event, now: Instant) {
        let transition = self.breaker().record(event, now);
        if let Some(transition) = transition {
            tracing::warn!(from = %transition.from, to = %transition.to, reason = %transition.reason, "circuit breaker");
            self.metrics.set_breaker(transition.to);
        }
    }

    /// Whether the breaker lets a request through at `now` (closed, half-open, or open with its
    /// cooldown over).
    pub fn allows(&self, now: Instant) -> bool {
        self.breaker().allows_request(now)
    }

    /// Whether a lane may send a request now: the probe while the breaker allows one, any other
    /// lane only while it is closed.
    pub fn may_send(&self, probe: bool, now: Instant) -> bool {
        let breaker = self.breaker();
        breaker.allows_request(now) && (probe || breaker.state().phase() == BreakerState::Closed)
    }

    /// Whether another lane may start next to `running` ones: up to `lanes` while the breaker is
    /// closed, otherwise only the probe, alone, once the breaker allows one.
    pub fn has_room(&self, running: usize, lanes: usize, now: Instant) -> bool {
        let breaker = self.breaker();
        if breaker.state().phase() == BreakerState::Closed {
            running < lanes
        } else {
            running == 0 && breaker.allows_request(now)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn gate(cooldown: Duration) -> Gate {
        let config = BreakerConfig {
            failure_threshold: 1,
            cooldown,
        };
        Gate::new(config, Arc::new(Metrics::new()))
    }

    #[test]
    fn an_open_gate_lets_only_the_probe_through_after_the_cooldown_and_the_metric_follows() {
        let g = gate(Duration::from_secs(5));
        let t0 = Instant::now();
        assert!(g.is_closed() && g.has_room(3, 4, t0) && !g.has_room(4, 4, t0));
        assert!(g.may_send(false, t0));

        g.record(&Event::Failed { reason: "x".into() }, t0);
        assert_eq!(g.state(), BreakerState::Open);
        assert!(g.metrics.breaker_is(BreakerState::Open));
        assert!(!g.allows(t0) && !g.may_send(true, t0) && !g.has_room(0, 4, t0));

        let later = t0 + Duration::from_secs(5);
        assert!(g.has_room(0, 4, later) && !g.has_room(1, 4, later));
        assert!(g.may_send(true, later) && !g.may_send(false, later));

        g.record(&Event::TimePassed, later);
        assert_eq!(g.state(), BreakerState::HalfOpen);
        g.record(&Event::Succeeded, later);
        assert!(g.is_closed() && g.metrics.breaker_is(BreakerState::Closed));
    }
}
