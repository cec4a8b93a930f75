//! Per-tenant fairness: each tenant's request rate (GCRA, the `governor` crate) and requests in
//! flight are limited, so one tenant at its limit leaves the rest of the server — and of the
//! partitions every tenant shares — to the others. A request over either limit is refused at
//! once (429 with `Retry-After`), before it reaches MongoDB; nothing is queued.
//!
//! The limits are per api-server process: each replica counts only what it serves. A global
//! count would need a shared store (a round trip on every request, and a new way for every
//! request to fail) to protect what is itself per replica: a replica's threads, its MongoDB
//! connections, its relay. With `replicas` replicas behind a Service a tenant may get up to
//! `replicas` times its limit in all.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use serde::Deserialize;

/// One tenant's limits. `None`: that limit is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Requests per second, sustained.
    pub rate: Option<NonZeroU32>,
    /// Requests that may arrive at once above the sustained rate (at least 1).
    pub burst: NonZeroU32,
    /// Requests in flight at once.
    pub concurrency: Option<NonZeroU32>,
}

impl Limit {
    fn quota(&self) -> Option<Quota> {
        self.rate
            .map(|rate| Quota::per_second(rate).allow_burst(self.burst))
    }
}

/// An override of `--tenant-overrides`: the fields it leaves out are the default's.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Override {
    pub tenant: String,
    #[serde(default)]
    pub requests_per_second: Option<u32>,
    #[serde(default)]
    pub burst: Option<u32>,
    #[serde(default)]
    pub concurrency: Option<u32>,
}

/// Builds a [`Limit`] from numbers where 0 means "off" (rate, concurrency) or "the rate" (burst).
pub fn limit(rate: u32, burst: u32, concurrency: u32) -> Limit {
    let rate = NonZeroU32::new(rate);
    Limit {
        rate,
        burst: NonZeroU32::new(burst).or(rate).unwrap_or(NonZeroU32::MIN),
        concurrency: NonZeroU32::new(concurrency),
    }
}

/// Parses `--tenant-overrides` (a JSON array), each on top of `default` (the numbers of the
/// command line, where 0 turns a limit off).
pub fn overrides(json: &str, default: (u32, u32, u32)) -> Result<HashMap<String, Limit>, String> {
    if json.trim().is_empty() {
        return Ok(HashMap::new());
    }
    let list: Vec<Override> = serde_json::from_str(json).map_err(|e| {
        format!("--tenant-overrides: {e} (expected [{{\"tenant\": \"...\", \"requestsPerSecond\": n, \"burst\": n, \"concurrency\": n}}])")
    })?;
    let mut out = HashMap::new();
    for o in list {
        if o.tenant.trim().is_empty() {
            return Err("--tenant-overrides: an override names no tenant".into());
        }
        let l = limit(
            o.requests_per_second.unwrap_or(default.0),
            o.burst.unwrap_or(default.1),
            o.concurrency.unwrap_or(default.2),
        );
        if out.insert(o.tenant.clone(), l).is_some() {
            return Err(format!("--tenant-overrides: tenant {:?} twice", o.tenant));
        }
    }
    Ok(out)
}

/// Which limit refused a request (the metric's `limit` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over the request rate: try again after this long.
    Rate(Duration),
    /// Too many requests of the tenant in flight.
    Concurrency,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Self::Rate(_) => "rate",
            Self::Concurrency => "concurrency",
        }
    }

    /// Whole seconds for `Retry-After` (at least 1).
    pub fn retry_after_secs(self) -> u64 {
        match self {
            Self::Rate(wait) => wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            Self::Concurrency => 1,
        }
        .max(1)
    }
}

type Keyed<C> =
    RateLimiter<String, DefaultKeyedStateStore<String>, C, NoOpMiddleware<<C as Clock>::Instant>>;
type Direct<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// The limits of every tenant and what each is using.
pub struct Fairness<C: Clock = DefaultClock> {
    default: Limit,
    /// Every tenant without an override shares one keyed limiter (one cell per tenant).
    keyed: Option<Keyed<C>>,
    overrides: HashMap<String, (Limit, Option<Direct<C>>)>,
    in_flight: InFlight,
    clock: C,
}

impl<C: Clock> std::fmt::Debug for Fairness<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fairness")
            .field("default", &self.default)
            .field("overrides", &self.overrides.len())
            .finish_non_exhaustive()
    }
}

impl Fairness<DefaultClock> {
    pub fn new(default: Limit, overrides: HashMap<String, Limit>) -> Self {
        Self::with_clock(default, overrides, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Fairness<C> {
    pub fn with_clock(default: Limit, overrides: HashMap<String, Limit>, clock: C) -> Self {
        let keyed = default
            .quota()
            .map(|q| RateLimiter::new(q, DefaultKeyedStateStore::default(), clock.clone()));
        let overrides = overrides
            .into_iter()
            .map(|(tenant, l)| {
                let direct = l
                    .quota()
                    .map(|q| RateLimiter::direct_with_clock(q, clock.clone()));
                (tenant, (l, direct))
            })
            .collect();
        Self {
            default,
            keyed,
            overrides,
            in_flight: Arc::default(),
            clock,
        }
    }

    /// The limits `tenant` runs under.
    pub fn limit_of(&self, tenant: &str) -> Limit {
        self.overrides.get(tenant).map_or(self.default, |(l, _)| *l)
    }

    /// Admits one request of `tenant`, or says which limit refuses it. The permit counts the
    /// request in flight until it is dropped. A refused request uses none of the rate.
    pub fn admit(&self, tenant: &str) -> Result<Permit, Refusal> {
        let limit = self.limit_of(tenant);
        let mut permit = None;
        if let Some(max) = limit.concurrency {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            let n = in_flight.entry(tenant.to_owned()).or_insert(0);
            if *n >= max.get() {
                return Err(Refusal::Concurrency);
            }
            *n += 1;
            permit = Some((self.in_flight.clone(), tenant.to_owned()));
        }
        let checked = match self.overrides.get(tenant) {
            Some((_, direct)) => direct.as_ref().map(RateLimiter::check),
            None => self
                .keyed
                .as_ref()
                .map(|keyed| keyed.check_key(&tenant.to_owned())),
        };
        match checked {
            Some(Err(not_until)) => {
                // The slot taken above goes back.
                drop(Permit { slot: permit });
                Err(Refusal::Rate(not_until.wait_time_from(self.clock.now())))
            }
            _ => Ok(Permit { slot: permit }),
        }
    }

    /// Forgets the rate state of tenants whose cells are back to full (bounded memory with
    /// many tenants); call now and then.
    pub fn forget_idle(&self) {
        if let Some(keyed) = &self.keyed {
            keyed.retain_recent();
            keyed.shrink_to_fit();
        }
    }
}

/// A request of a tenant in flight; dropping it ends it.
#[derive(Debug)]
pub struct Permit {
    /// The count it holds a slot of (none when the tenant's concurrency is not limited).
    slot: Option<(InFlight, String)>,
}

type InFlight = Arc<Mutex<HashMap<String, u32>>>;

impl Drop for Permit {
    fn drop(&mut self) {
        let Some((in_flight, tenant)) = self.slot.take() else {
            return;
        };
        let mut in_flight = in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = in_flight.get_mut(&tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                in_flight.remove(&tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn fairness(
        default: Limit,
        overrides: HashMap<String, Limit>,
    ) -> (Fairness<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (
            Fairness::with_clock(default, overrides, clock.clone()),
            clock,
        )
    }

    #[test]
    fn a_tenant_over_its_rate_waits_while_another_goes_on() {
        let (f, clock) = fairness(limit(10, 2, 0), HashMap::new());
        let _a1 = f.admit("a").unwrap();
        let _a2 = f.admit("a").unwrap();
        let Err(Refusal::Rate(wait)) = f.admit("a") else {
            panic!("the third request of a burst of 2 must be refused");
        };
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        assert_eq!(Refusal::Rate(wait).retry_after_secs(), 1);
        for _ in 0..2 {
            f.admit("b").expect("b has its own allowance");
        }
        clock.advance(Duration::from_millis(100));
        f.admit("a").expect("one more after 1/10 s");
    }

    #[test]
    fn in_flight_requests_count_until_their_permit_drops() {
        let (f, _) = fairness(limit(0, 0, 2), HashMap::new());
        let a1 = f.admit("a").unwrap();
        let _a2 = f.admit("a").unwrap();
        assert_eq!(f.admit("a").unwrap_err(), Refusal::Concurrency);
        f.admit("b").expect("b's requests are its own");
        drop(a1);
        f.admit("a").expect("a slot came back");
    }

    #[test]
    fn a_refused_rate_gives_its_concurrency_slot_back() {
        let (f, _) = fairness(limit(1, 1, 1), HashMap::new());
        drop(f.admit("a").unwrap());
        assert!(matches!(f.admit("a"), Err(Refusal::Rate(_))));
        assert!(
            f.in_flight.lock().unwrap().is_empty(),
            "no request of a is in flight"
        );
    }

    #[test]
    fn an_override_replaces_the_default_for_its_tenant_only() {
        let o = overrides(
            r#"[{"tenant": "big", "requestsPerSecond": 100, "burst": 5}, {"tenant": "free", "requestsPerSecond": 0}]"#,
            (1, 1, 4),
        )
        .unwrap();
        assert_eq!(o["big"], limit(100, 5, 4), "concurrency from the default");
        assert_eq!(o["free"].rate, None, "0 turns the rate limit off");
        let (f, _) = fairness(limit(1, 1, 4), o);
        for _ in 0..5 {
            f.admit("big").unwrap();
        }
        assert!(f.admit("big").is_err());
        for _ in 0..50 {
            f.admit("free").unwrap();
        }
        f.admit("small").unwrap();
        assert!(f.admit("small").is_err(), "the default: 1 per second");
    }

    #[test]
    fn bad_overrides_are_refused_with_the_reason() {
        for (json, says) in [
            ("{", "--tenant-overrides"),
            (r#"[{"tenant": ""}]"#, "no tenant"),
            (r#"[{"tenant": "a"}, {"tenant": "a"}]"#, "twice"),
            (r#"[{"tenant": "a", "rate": 3}]"#, "unknown field"),
        ] {
            let e = overrides(json, (1, 1, 1)).unwrap_err();
            assert!(e.contains(says), "{json}: {e}");
        }
        assert!(overrides("  ", (1, 1, 1)).unwrap().is_empty());
    }

    #[test]
    fn burst_zero_means_the_rate_and_retry_after_rounds_up() {
        assert_eq!(limit(7, 0, 0).burst.get(), 7);
        assert_eq!(limit(0, 0, 0).burst.get(), 1);
        assert_eq!(
            Refusal::Rate(Duration::from_millis(1500)).retry_after_secs(),
            2
        );
        assert_eq!(Refusal::Rate(Duration::ZERO).retry_after_secs(), 1);
    }
}
