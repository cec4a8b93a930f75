//! Status: what the reconcile found, turned into conditions, worker summaries and the columns of
//! `kubectl get mp`. Pure: every input is passed in, so each rule is table-tested.
//!
//! Condition rules: `TopicsReady`, `IndexTemplateReady`, `ApiServerAvailable` and
//! `IndexerAvailable` each say whether their part is in place; `IndexerHealthy` is False while
//! any live indexer reports an open (or half-open) circuit breaker; `Degraded` is True when the
//! pipeline works but something needs a human (a breaker, a topic with more partitions than the
//! spec, an audit's divergence not repaired); `IndexInSync` says what the last audit found (module
//! `audit`); `Ready` is True only when every part is in place and the indexers are healthy, and its
//! reason names the first thing that is not. `lastTransitionTime` changes only when a condition's
//! status does.

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use messagepipeline_crd::{
    AuditStatus, Condition, ExternalStatus, IndexStatus, MessagePipelineStatus, RoleStatus,
    Workers, condition,
};
use pipeline_contract::access::Refused;
use pipeline_contract::lease::{RebuildProgress, expired};
use pipeline_contract::worker::lease::RelayBacklog;

use crate::audit::InSync;
use crate::rebuild::Verdict;
use pipeline_contract::worker::{BreakerState, Role, lease};

/// One worker as its Lease describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveWorker {
    pub role: Role,
    pub ready: bool,
    /// An indexer's breaker; `None` for the api-server, or a value this operator does not know.
    pub breaker: Option<BreakerState>,
    /// The api-server's relay backlog bucket.
    pub relay_backlog: Option<RelayBacklog>,
    /// A refusal the worker's clients met recently: (reason, message).
    pub refused: Option<(String, String)>,
    /// A rebuild Job's progress.
    pub rebuild: Option<RebuildProgress>,
}

/// Whether a Lease labelled with `mp`'s name belongs to the object with `uid`: a pipeline deleted
/// and created again under the same name is another object, whose predecessor's workers may
/// still be stopping. A Lease without the uid label (a worker given none) belongs.
pub fn of_pipeline(l: &Lease, uid: Option<&str>) -> bool {
    let label = l
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(lease::LABEL_PIPELINE_UID));
    match (label, uid) {
        (Some(label), Some(uid)) => label == uid,
        _ => true,
    }
}

/// The live worker a Lease stands for (`None` for an expired Lease).
pub fn live_worker(l: &Lease, now: Timestamp) -> Option<LiveWorker> {
    if expired(l, now) {
        return None;
    }
    let labels = l.metadata.labels.as_ref()?;
    let annotations = l.metadata.annotations.clone().unwrap_or_default();
    Some(LiveWorker {
        role: Role::parse(labels.get(lease::LABEL_ROLE)?)?,
        ready: annotations.get(lease::ANNOTATION_READY).map(String::as_str) == Some("true"),
        breaker: annotations
            .get(lease::ANNOTATION_BREAKER)
            .and_then(|b| BreakerState::parse(b)),
        relay_backlog: annotations
            .get(lease::ANNOTATION_RELAY_BACKLOG)
            .and_then(|b| RelayBacklog::parse(b)),
        refused: annotations.get(lease::ANNOTATION_REFUSAL).map(|reason| {
            let message = annotations
                .get(lease::ANNOTATION_REFUSAL_MESSAGE)
                .cloned()
                .unwrap_or_default();
            (reason.clone(), message)
        }),
        rebuild: RebuildProgress::from_annotations(&annotations),
    })
}

/// Why a part is not in place: its condition's reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: String,
    pub message: String,
}

impl Failure {
    pub fn new(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// A service refused: the refusal is the reason.
    pub fn refused(refused: &Refused) -> Self {
        Self::new(refused.refusal.reason(), refused.to_string())
    }
}

/// A worker Deployment's rollout as the API server answered the apply of its current spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    /// `spec.replicas`.
    pub desired: i32,
    /// Pods of every revision (`status.replicas`): above `updated` while old pods remain.
    pub replicas: i32,
    /// Pods of the current template (`status.updatedReplicas`).
    pub updated: i32,
    pub available: i32,
    /// The Deployment controller has seen the current spec (`status.observedGeneration` ≥
    /// `metadata.generation`): until then its counts describe an older one.
    pub observed: bool,
    /// The rollout passed its progress deadline: the Deployment's `Progressing` message.
    pub stalled: Option<String>,
}

impl Rollout {
    /// Every replica runs the current spec and is available, and no older pod is left: what
    /// `kubectl rollout status` waits for.
    pub fn complete(&self) -> bool {
        self.observed
            && self.updated >= self.desired
            && self.available >= self.desired
            && self.replicas <= self.updated
    }
}

/// What the external steps found.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub generation: Option<i64>,
    /// `Ok(notes)` when the topics are as the spec says (notes: what needs a human), or why not.
    pub topics: Result<Vec<String>, Failure>,
    pub template: Result<(), Failure>,
    /// Each worker Deployment's rollout; `None` when not readable (or not applied yet).
    pub api_available: Option<Rollout>,
    pub indexer_available: Option<Rollout>,
    pub workers: Vec<LiveWorker>,
    pub consumer_lag: Option<i64>,
    pub dlq_depth: Option<i64>,
    /// The index behind the alias and the latest rebuild; `None` when the engine could not be
    /// read (the stored status then stays).
    pub index: Option<(IndexStatus, Verdict)>,
    /// The last audit that finished, and what it says of the index.
    pub audit: (Option<AuditStatus>, InSync),
    /// The clusters by identity, the topics seen and made, topics lost.
    pub external: ExternalStatus,
}

fn cond(type_: &str, ok: Option<bool>, reason: &str, message: String) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: match ok {
            Some(true) => "True",
            Some(false) => "False",
            None => "Unknown",
        }
        .to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: None,
        last_transition_time: String::new(),
    }
}

/// Whether the role's Deployment runs the current spec on all its replicas, unless a live
/// worker of it reports that a service refuses it: a worker refused its credentials, CA or
/// permissions cannot do its job whatever its pod says, and the refusal is the reason. A rollout
/// under way is not available yet (old pods serve, but the spec asked for does not run); one past
/// its progress deadline is stuck.
fn availability(
    type_: &str,
    what: &str,
    rollout: Option<&Rollout>,
    workers: &[&LiveWorker],
) -> Condition {
    let refused: Vec<&(String, String)> =
        workers.iter().filter_map(|w| w.refused.as_ref()).collect();
    if let Some((reason, message)) = refused.first() {
        return cond(
            type_,
            Some(false),
            reason,
            format!(
                "{} of {} live {what}s report a refusal: {message}",
                refused.len(),
                workers.len()
            ),
        );
    }
    let Some(r) = rollout else {
        return cond(
            type_,
            None,
            "DeploymentUnknown",
            format!("the {what} Deployment's status is not known yet"),
        );
    };
    let (a, u, d) = (r.available, r.updated, r.desired);
    if let Some(message) = &r.stalled {
        return cond(
            type_,
            Some(false),
            "RolloutStuck",
            format!(
                "the {what} rollout made no progress within its deadline ({u}/{d} replicas run the current spec, {a} available): {message}"
            ),
        );
    }
    if !r.observed {
        return cond(
            type_,
            Some(false),
            "RollingOut",
            format!("the {what} Deployment has not yet taken up the current spec"),
        );
    }
    match (a, u, d) {
        (_, _, 0) if r.replicas == 0 => cond(
            type_,
            Some(true),
            "ScaledToZero",
            format!("the {what} is scaled to zero"),
        ),
        _ if r.complete() => cond(
            type_,
            Some(true),
            "MinimumReplicasAvailable",
            format!("{a}/{d} {what} replicas available, all on the current spec"),
        ),
        _ if u < d || r.replicas > u => cond(
            type_,
            Some(false),
            "RollingOut",
            format!("{u}/{d} {what} replicas run the current spec ({a} available)"),
        ),
        (a, _, d) if a > 0 => cond(
            type_,
            Some(false),
            "ReplicasUnavailable",
            format!("only {a}/{d} {what} replicas available"),
        ),
        (_, _, d) => cond(
            type_,
            Some(false),
            "NoReplicasAvailable",
            format!("0/{d} {what} replicas available"),
        ),
    }
}

fn role_status(workers: &[LiveWorker], role: Role, desired: i32) -> RoleStatus {
    let mine: Vec<&LiveWorker> = workers.iter().filter(|w| w.role == role).collect();
    let ready = mine.iter().filter(|w| w.ready).count() as i32;
    let mut breakers = BTreeMap::new();
    for w in &mine {
        if let Some(b) = w.breaker {
            *breakers.entry(b.as_str().to_owned()).or_insert(0) += 1;
        }
    }
    RoleStatus {
        desired,
        live: mine.len() as i32,
        ready,
        summary: format!("{ready}/{desired}"),
        breakers,
    }
}

/// The status for `observed`, keeping transition times of conditions whose status did not change.
pub fn status(
    observed: &Observed,
    previous: &[Condition],
    now: Timestamp,
) -> MessagePipelineStatus {
    let api_desired = observed.api_available.as_ref().map_or(0, |r| r.desired);
    let indexer_desired = observed.indexer_available.as_ref().map_or(0, |r| r.desired);
    let workers = Workers {
        api: role_status(&observed.workers, Role::Api, api_desired),
        indexer: role_status(&observed.workers, Role::Indexer, indexer_desired),
    };
    let worst = observed
        .workers
        .iter()
        .filter(|w| w.role == Role::Indexer)
        .filter_map(|w| w.breaker)
        .max();
    let topics = topics_ready(observed);
    let template = template_ready(observed);
    let of = |role: Role| -> Vec<&LiveWorker> {
        observed.workers.iter().filter(|w| w.role == role).collect()
    };
    let api = availability(
        condition::API_SERVER_AVAILABLE,
        "api-server",
        observed.api_available.as_ref(),
        &of(Role::Api),
    );
    let indexer = availability(
        condition::INDEXER_AVAILABLE,
        "indexer",
        observed.indexer_available.as_ref(),
        &of(Role::Indexer),
    );
    let healthy = indexer_healthy(worst, &workers.indexer);
    let relay_backlog = observed
        .workers
        .iter()
        .filter(|w| w.role == Role::Api)
        .filter_map(|w| w.relay_backlog)
        .max();
    let degraded = degraded(observed, &workers, &healthy);
    let ready = ready([&topics, &template, &api, &indexer, &healthy]);
    let mut conditions: Vec<Condition> = [ready, topics, template, api, indexer, healthy, degraded]
        .into_iter()
        .map(|c| settle(c, previous, observed.generation, now))
        .collect();
    conditions.extend(index_conditions(observed, previous, now));
    MessagePipelineStatus {
        observed_generation: observed.generation,
        conditions,
        workers,
        consumer_lag: observed.consumer_lag,
        dlq_depth: observed.dlq_depth,
        breaker: worst.map(|b| b.as_str().to_owned()),
        relay_backlog: relay_backlog.map(|b| b.as_str().to_owned()),
        index: observed.index.as_ref().map(|(i, _)| i.clone()),
        audit: observed.audit.0.clone(),
        external: observed.external.clone(),
    }
}

/// `Rebuilding` and `IndexInSync`: what is done about the index and what the last audit found.
/// Neither is part of `Ready`: the pipeline serves while a rebuild runs or a divergence is found.
fn index_conditions(observed: &Observed, previous: &[Condition], now: Timestamp) -> Vec<Condition> {
    let mut conditions = Vec::new();
    // Whether a rebuild runs is not whether the pipeline works: it stays out of `Ready`.
    match &observed.index {
        Some((_, v)) => conditions.push(settle(
            cond(
                condition::REBUILDING,
                v.running,
                &v.reason,
                v.message.clone(),
            ),
            previous,
            observed.generation,
            now,
        )),
        None => conditions.extend(
            previous
                .iter()
                .filter(|c| c.type_ == condition::REBUILDING)
                .cloned(),
        ),
    }
    let in_sync = &observed.audit.1;
    conditions.push(settle(
        cond(
            condition::INDEX_IN_SYNC,
            in_sync.status,
            in_sync.reason,
            in_sync.message.clone(),
        ),
        previous,
        observed.generation,
        now,
    ));
    conditions
}

/// The topics in place as the spec says; topics lost since (made again, empty) are not ready
/// until a rebuild is asked for.
fn topics_ready(observed: &Observed) -> Condition {
    match (&observed.topics, &observed.external.topics_lost) {
        (Ok(_), Some(lost)) => cond(
            condition::TOPICS_READY,
            Some(false),
            crate::external::TOPIC_LOST,
            crate::external::lost_message(lost),
        ),
        (Ok(_), None) => cond(
            condition::TOPICS_READY,
            Some(true),
            "TopicsReconciled",
            "the events topic and its DLQ exist with the spec's settings".into(),
        ),
        (Err(f), _) => cond(
            condition::TOPICS_READY,
            Some(false),
            &f.reason,
            f.message.clone(),
        ),
    }
}

/// The template in place and the alias pointing at an index. A pipeline that had its index and
/// lost it is not ready, whatever the template: searches fail until a rebuild fills the next
/// generation (the verdict says which to ask for), and during that rebuild too.
fn template_ready(observed: &Observed) -> Condition {
    let lost = observed
        .index
        .as_ref()
        .filter(|(i, _)| i.generation.is_some() && i.indices.is_empty());
    match (&observed.template, lost) {
        (Ok(()), Some((_, v))) => cond(
            condition::INDEX_TEMPLATE_READY,
            Some(false),
            if v.reason == crate::rebuild::INDEX_LOST {
                crate::rebuild::INDEX_LOST
            } else {
                "IndexRebuilding"
            },
            v.message.clone(),
        ),
        (Ok(()), None) => cond(
            condition::INDEX_TEMPLATE_READY,
            Some(true),
            "TemplateInstalled",
            "index template, first index and write alias are in place".into(),
        ),
        (Err(f), _) => cond(
            condition::INDEX_TEMPLATE_READY,
            Some(false),
            &f.reason,
            f.message.clone(),
        ),
    }
}

/// False while any live indexer's breaker is open or half-open (the worst decides).
fn indexer_healthy(worst: Option<BreakerState>, indexers: &RoleStatus) -> Condition {
    let (breakers, live) = (&indexers.breakers, indexers.live);
    match worst {
        Some(BreakerState::Open) => cond(
            condition::INDEXER_HEALTHY,
            Some(false),
            "BreakerOpen",
            format!(
                "{} of {live} live indexers have an open circuit breaker: the search engine is failing and indexing is paused",
                breakers[BreakerState::Open.as_str()]
            ),
        ),
        Some(BreakerState::HalfOpen) => cond(
            condition::INDEXER_HEALTHY,
            Some(false),
            "BreakerHalfOpen",
            format!(
                "{} of {live} live indexers are probing the search engine after an outage",
                breakers[BreakerState::HalfOpen.as_str()]
            ),
        ),
        _ if live == 0 => cond(
            condition::INDEXER_HEALTHY,
            None,
            "NoLiveIndexers",
            "no indexer holds a live Lease".into(),
        ),
        _ => cond(
            condition::INDEXER_HEALTHY,
            Some(true),
            "BreakersClosed",
            format!("{live} live indexer(s), every circuit breaker closed"),
        ),
    }
}

/// True when the pipeline works but something needs a human: an unhealthy indexer, a relay
/// behind by a minute or more, a topic with more partitions than the spec.
fn degraded(observed: &Observed, workers: &Workers, healthy: &Condition) -> Condition {
    let backlogs: Vec<RelayBacklog> = observed
        .workers
        .iter()
        .filter(|w| w.role == Role::Api)
        .filter_map(|w| w.relay_backlog)
        .collect();
    let relay_backlog = backlogs.iter().max().copied();
    let stuck = backlogs
        .iter()
        .filter(|b| **b >= RelayBacklog::Over1m)
        .count();
    let mut needs_human: Vec<String> = observed.topics.clone().unwrap_or_default();
    if stuck > 0 {
        needs_human.insert(
            0,
            format!(
                "{stuck} of {} live api-servers owe Kafka changes acknowledged {} ago or more (is Kafka reachable?)",
                workers.api.live,
                if relay_backlog == Some(RelayBacklog::Over10m) { "10m" } else { "1m" },
            ),
        );
    }
    // The index needs a rebuild: its mapping is outdated, or it is gone.
    let outdated = observed.index.as_ref().filter(|(_, v)| {
        [crate::rebuild::MAPPING_OUTDATED, crate::rebuild::INDEX_LOST].contains(&v.reason.as_str())
    });
    if let Some((_, v)) = outdated {
        needs_human.insert(0, v.message.clone());
    }
    let diverged = observed.audit.1.reason == crate::audit::DIVERGENCE_FOUND;
    if diverged {
        needs_human.push(observed.audit.1.message.clone());
    }
    if healthy.status == "False" {
        needs_human.insert(0, healthy.message.clone());
    }
    if needs_human.is_empty() {
        cond(
            condition::DEGRADED,
            Some(false),
            "AsExpected",
            "nothing needs attention".into(),
        )
    } else {
        let reason = if healthy.status == "False" {
            healthy.reason.as_str()
        } else if stuck > 0 {
            "RelayBehind"
        } else if let Some((_, v)) = outdated {
            v.reason.as_str()
        } else if diverged {
            crate::audit::DIVERGENCE_FOUND
        } else {
            "PartitionsAboveSpec"
        };
        cond(
            condition::DEGRADED,
            Some(true),
            reason,
            needs_human.join("; "),
        )
    }
}

/// Ready when every part is in place and the indexers are healthy; the first that is not decides
/// the reason.
fn ready(parts: [&Condition; 5]) -> Condition {
    let blocking = parts.iter().find(|c| {
        c.status == "False" || (c.status == "Unknown" && c.type_ != condition::INDEXER_HEALTHY)
    });
    match blocking {
        Some(c) => cond(
            condition::READY,
            Some(false),
            &c.reason,
            format!("{}: {}", c.type_, c.message),
        ),
        None => cond(
            condition::READY,
            Some(true),
            "PipelineReady",
            "topics, index, api-server and indexer are in place and healthy".into(),
        ),
    }
}

/// Status for a resource the operator refuses to act on (invalid, or in conflict): `Ready=False`
/// with the reason; the other conditions keep what they said.
pub fn refused(
    reason: &str,
    problems: &[String],
    previous: &MessagePipelineStatus,
    generation: Option<i64>,
    now: Timestamp,
) -> MessagePipelineStatus {
    let ready = settle(
        cond(condition::READY, Some(false), reason, problems.join("; ")),
        &previous.conditions,
        generation,
        now,
    );
    let mut conditions: Vec<Condition> = previous
        .conditions
        .iter()
        .filter(|c| c.type_ != condition::READY)
        .cloned()
        .collect();
    conditions.insert(0, ready);
    MessagePipelineStatus {
        observed_generation: generation,
        conditions,
        ..previous.clone()
    }
}

fn settle(
    mut c: Condition,
    previous: &[Condition],
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    c.observed_generation = generation;
    c.last_transition_time = previous
        .iter()
        .find(|p| p.type_ == c.type_ && p.status == c.status)
        .map_or_else(|| now.to_string(), |p| p.last_transition_time.clone());
    c
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};

    use super::*;

    fn worker(role: Role, ready: bool, breaker: Option<BreakerState>) -> LiveWorker {
        LiveWorker {
            role,
            ready,
            breaker,
            relay_backlog: (role == Role::Api).then_some(RelayBacklog::Clear),
            refused: None,
            rebuild: None,
        }
    }

    /// A Deployment of `n` replicas, all on the current spec and available.
    fn rolled(n: i32) -> Rollout {
        Rollout {
            desired: n,
            replicas: n,
            updated: n,
            available: n,
            observed: true,
            stalled: None,
        }
    }

    fn healthy() -> Observed {
        Observed {
            generation: Some(3),
            topics: Ok(vec![]),
            template: Ok(()),
            api_available: Some(rolled(2)),
            indexer_available: Some(rolled(2)),
            workers: vec![
                worker(Role::Api, true, None),
                worker(Role::Api, true, None),
                worker(Role::Indexer, true, Some(BreakerState::Closed)),
                worker(Role::Indexer, true, Some(BreakerState::Closed)),
            ],
            consumer_lag: Some(5),
            index: None,
            dlq_depth: Some(0),
            audit: (None, crate::audit::in_sync(None, None)),
            external: ExternalStatus::default(),
        }
    }

    fn get<'a>(s: &'a MessagePipelineStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn conditions_follow_the_rules() {
        let now = Timestamp::from_second(1_000).unwrap();
        type Case = (
            &'static str,
            Box<dyn Fn(&mut Observed)>,
            &'static str,
            &'static str,
            &'static str,
            Option<&'static str>,
        );
        // (name, change, Ready status, Ready reason, Degraded status, breaker column)
        let cases: Vec<Case> = vec![
            (
                "healthy",
                Box::new(|_| {}),
                "True",
                "PipelineReady",
                "False",
                Some("closed"),
            ),
            (
                "kafka down",
                Box::new(|o| o.topics = Err(Failure::new("KafkaError", "brokers unreachable"))),
                "False",
                "KafkaError",
                "False",
                Some("closed"),
            ),
            (
                "template",
                Box::new(|o| {
                    o.template = Err(Failure::new("SearchAuthenticationFailed", "401"));
                }),
                "False",
                "SearchAuthenticationFailed",
                "False",
                Some("closed"),
            ),
            (
                "api short",
                Box::new(|o| o.api_available.as_mut().unwrap().available = 1),
                "False",
                "ReplicasUnavailable",
                "False",
                Some("closed"),
            ),
            (
                "indexer none",
                Box::new(|o| o.indexer_available.as_mut().unwrap().available = 0),
                "False",
                "NoReplicasAvailable",
                "False",
                Some("closed"),
            ),
            (
                "indexer refused by Kafka",
                Box::new(|o| {
                    o.workers[2].refused = Some((
                        "KafkaAuthenticationFailed".into(),
                        "Kafka at k:9093 refused the connection".into(),
                    ));
                }),
                "False",
                "KafkaAuthenticationFailed",
                "False",
                Some("closed"),
            ),
            (
                "api-server refused by the engine",
                Box::new(|o| {
                    o.workers[1].refused = Some(("SearchTLSUntrusted".into(), String::new()));
                }),
                "False",
                "SearchTLSUntrusted",
                "False",
                Some("closed"),
            ),
            (
                "breaker open",
                Box::new(|o| o.workers[3].breaker = Some(BreakerState::Open)),
                "False",
                "BreakerOpen",
                "True",
                Some("open"),
            ),
            (
                "half open",
                Box::new(|o| o.workers[2].breaker = Some(BreakerState::HalfOpen)),
                "False",
                "BreakerHalfOpen",
                "True",
                Some("half-open"),
            ),
            (
                "partitions above",
                Box::new(|o| o.topics = Ok(vec!["topic has 12 partitions, spec asks 6".into()])),
                "True",
                "PipelineReady",
                "True",
                Some("closed"),
            ),
            (
                "relay 10s behind",
                Box::new(|o| o.workers[0].relay_backlog = Some(RelayBacklog::Over10s)),
                "True",
                "PipelineReady",
                "False",
                Some("closed"),
            ),
            (
                "relay stuck",
                Box::new(|o| o.workers[1].relay_backlog = Some(RelayBacklog::Over1m)),
                "True",
                "PipelineReady",
                "True",
                Some("closed"),
            ),
            (
                "no leases",
                Box::new(|o| o.workers.clear()),
                "True",
                "PipelineReady",
                "False",
                None,
            ),
            (
                "index diverged from MongoDB",
                Box::new(|o| {
                    o.audit.1 = crate::audit::InSync {
                        status: Some(false),
                        reason: crate::audit::DIVERGENCE_FOUND,
                        message: "found 2 of 100 documents divergent".into(),
                    };
                }),
                "True",
                "PipelineReady",
                "True",
                Some("closed"),
            ),
            (
                // A new image: old pods still serve, but the spec asked for does not run yet.
                "rolling out",
                Box::new(|o| {
                    let r = o.api_available.as_mut().unwrap();
                    (r.replicas, r.updated, r.available) = (3, 1, 2);
                }),
                "False",
                "RollingOut",
                "False",
                Some("closed"),
            ),
            (
                "every pod updated, an old one still terminating",
                Box::new(|o| o.indexer_available.as_mut().unwrap().replicas = 3),
                "False",
                "RollingOut",
                "False",
                Some("closed"),
            ),
            (
                "new spec not yet taken up by the Deployment controller",
                Box::new(|o| o.api_available.as_mut().unwrap().observed = false),
                "False",
                "RollingOut",
                "False",
                Some("closed"),
            ),
            (
                "rollout past its deadline",
                Box::new(|o| {
                    let r = o.indexer_available.as_mut().unwrap();
                    (r.replicas, r.updated) = (3, 1);
                    r.stalled =
                        Some("ReplicaSet \"chat-indexer-7d\" has timed out progressing.".into());
                }),
                "False",
                "RolloutStuck",
                "False",
                Some("closed"),
            ),
            (
                "scaled to zero",
                Box::new(|o| o.api_available = Some(rolled(0))),
                "True",
                "PipelineReady",
                "False",
                Some("closed"),
            ),
            (
                "events topic deleted behind the operator, made again",
                Box::new(|o| {
                    o.external.topics_lost = Some(messagepipeline_crd::TopicsLost {
                        topics: vec!["t".into()],
                        index_generation: 1,
                        time: "2026-12-07T00:00:00Z".into(),
                    });
                }),
                "False",
                "TopicLost",
                "False",
                Some("closed"),
            ),
            (
                "index deleted behind the operator",
                Box::new(|o| {
                    o.index = Some((
                        IndexStatus {
                            generation: Some(1),
                            indices: vec![],
                            rebuild: None,
                        },
                        Verdict {
                            running: Some(false),
                            reason: crate::rebuild::INDEX_LOST.into(),
                            message: "the alias points at no index".into(),
                        },
                    ));
                }),
                "False",
                "IndexLost",
                "True",
                Some("closed"),
            ),
            (
                "unknown deployment",
                Box::new(|o| o.api_available = None),
                "False",
                "DeploymentUnknown",
                "False",
                Some("closed"),
            ),
        ];
        for (name, change, ready, reason, degraded, breaker) in cases {
            let mut o = healthy();
            change(&mut o);
            let s = status(&o, &[], now);
            let r = get(&s, "Ready");
            assert_eq!(
                (r.status.as_str(), r.reason.as_str()),
                (ready, reason),
                "{name}: {r:?}"
            );
            assert_eq!(get(&s, "Degraded").status, degraded, "{name}");
            assert_eq!(s.breaker.as_deref(), breaker, "{name}");
            let rebuilding = usize::from(o.index.is_some());
            assert_eq!(
                s.conditions.len(),
                8 + rebuilding,
                "seven, IndexInSync (and Rebuilding)"
            );
            assert!(
                s.conditions
                    .iter()
                    .all(|c| c.observed_generation == Some(3))
            );
        }
        let open = {
            let mut o = healthy();
            o.workers[3].breaker = Some(BreakerState::Open);
            status(&o, &[], now)
        };
        assert!(
            get(&open, "Ready")
                .message
                .contains("1 of 2 live indexers have an open circuit breaker")
        );
        assert_eq!(get(&open, "IndexerHealthy").status, "False");
        assert_eq!(open.workers.indexer.summary, "2/2");
        assert_eq!(open.workers.indexer.breakers["open"], 1);

        let stuck = {
            let mut o = healthy();
            o.workers[1].relay_backlog = Some(RelayBacklog::Over10m);
            status(&o, &[], now)
        };
        let degraded = get(&stuck, "Degraded");
        assert_eq!(degraded.reason, "RelayBehind");
        assert!(
            degraded
                .message
                .contains("1 of 2 live api-servers owe Kafka changes acknowledged 10m ago"),
            "{degraded:?}"
        );
        assert_eq!(stuck.relay_backlog.as_deref(), Some("over-10m"));
        assert_eq!(
            status(&healthy(), &[], now).relay_backlog.as_deref(),
            Some("clear")
        );
    }

    #[test]
    fn transition_times_change_only_with_the_status() {
        let t1 = Timestamp::from_second(1_000).unwrap();
        let t2 = Timestamp::from_second(2_000).unwrap();
        let first = status(&healthy(), &[], t1);
        let again = status(&healthy(), &first.conditions, t2);
        assert_eq!(first, again, "nothing changed, nothing moves");
        let mut o = healthy();
        o.template = Err(Failure::new("SearchEngineError", "down"));
        let changed = status(&o, &again.conditions, t2);
        assert_eq!(
            get(&changed, "IndexTemplateReady").last_transition_time,
            t2.to_string()
        );
        assert_eq!(
            get(&changed, "TopicsReady").last_transition_time,
            t1.to_string()
        );
    }

    #[test]
    fn refused_keeps_the_other_conditions() {
        let now = Timestamp::from_second(5).unwrap();
        let before = status(&healthy(), &[], now);
        let s = refused(
            "ResourceConflict",
            &["topic `t` is already claimed".into()],
            &before,
            Some(4),
            now,
        );
        let r = get(&s, "Ready");
        assert_eq!(
            (r.status.as_str(), r.reason.as_str()),
            ("False", "ResourceConflict")
        );
        assert_eq!(get(&s, "TopicsReady"), get(&before, "TopicsReady"));
        assert_eq!(s.observed_generation, Some(4));
    }

    #[test]
    fn a_refusal_a_worker_writes_on_its_lease_is_read_back_as_written() {
        use pipeline_contract::access::{Cause, Refusal, Service};
        use pipeline_contract::lease::{Identity, WorkerState, lease_object};
        let refused = Refused {
            refusal: Refusal::new(Service::Kafka, Cause::AuthorizationFailed),
            endpoint: "kafka:9093".into(),
            detail: "Broker: Topic authorization failed".into(),
        };
        let id = Identity {
            pipeline: "p".into(),
            namespace: "n".into(),
            pipeline_uid: None,
            pod: "p-indexer-0".into(),
            role: Role::Indexer,
        };
        let now = Timestamp::from_second(1_000).unwrap();
        let state = WorkerState {
            ready: false,
            breaker: Some(BreakerState::Closed),
            relay_backlog: None,
            refused: Some(refused.clone()),
            rebuild: None,
        };
        let live = live_worker(&lease_object(&id, &state, now), now).unwrap();
        assert_eq!(
            live.refused,
            Some(("KafkaAuthorizationFailed".into(), refused.to_string()))
        );
        let quiet = WorkerState {
            refused: None,
            ..state
        };
        assert_eq!(
            live_worker(&lease_object(&id, &quiet, now), now)
                .unwrap()
                .refused,
            None
        );
    }

    #[test]
    fn leases_expire_after_their_duration() {
        let lease = |renewed: i64, role: &str, ready: &str| Lease {
            metadata: ObjectMeta {
                labels: Some(BTreeMap::from([(
                    lease::LABEL_ROLE.to_owned(),
                    role.to_owned(),
                )])),
                annotations: Some(BTreeMap::from([
                    (lease::ANNOTATION_READY.to_owned(), ready.to_owned()),
                    (
                        lease::ANNOTATION_RELAY_BACKLOG.to_owned(),
                        if role == "api" { "clear" } else { "bogus" }.to_owned(),
                    ),
                ])),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                lease_duration_seconds: Some(30),
                renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
                ..LeaseSpec::default()
            }),
        };
        let now = Timestamp::from_second(100).unwrap();
        assert_eq!(
            live_worker(&lease(80, "indexer", "true"), now),
            Some(worker(Role::Indexer, true, None))
        );
        assert_eq!(
            live_worker(&lease(70, "api", "false"), now),
            Some(worker(Role::Api, false, None))
        );
        assert_eq!(live_worker(&lease(69, "api", "true"), now), None);
    }

    #[test]
    fn a_lease_belongs_to_the_object_whose_uid_it_carries() {
        let lease = |uid: Option<&str>| Lease {
            metadata: ObjectMeta {
                labels: Some(
                    uid.map(|u| (lease::LABEL_PIPELINE_UID.to_owned(), u.to_owned()))
                        .into_iter()
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            ..Lease::default()
        };
        let cases = [
            (Some("a"), Some("a"), true),
            (Some("old"), Some("new"), false),
            // A worker given no uid, or a resource not stored yet: by name alone.
            (None, Some("a"), true),
            (Some("a"), None, true),
            (None, None, true),
        ];
        for (label, uid, belongs) in cases {
            assert_eq!(
                of_pipeline(&lease(label), uid),
                belongs,
                "{label:?} {uid:?}"
            );
        }
    }
}
