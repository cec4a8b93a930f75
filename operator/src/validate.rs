//! Validate: what the schema cannot say, checked before anything is touched; and claims: a
//! topic, consumer group, alias or collection belongs to one MessagePipeline per cluster, the
//! cluster known by its identity (Kafka's cluster id, the engine's cluster uuid) rather than by
//! how an address is spelled.
//!
//! Both are pure: the controller passes the resource (and, for claims, every MessagePipeline it
//! knows) and turns the answer into a `Ready=False` condition with the reason.

use std::cmp::Ordering;

use kube::ResourceExt;
use messagepipeline_crd::{ExternalStatus, MessagePipeline};

/// Topic settings the operator sets and keeps (Kafka can change them in place). Anything else in
/// `spec.kafka.topic.config` is refused: the operator could not revert drift in it safely.
pub const ALTERABLE_TOPIC_SETTINGS: [&str; 7] = [
    "retention.bytes",
    "segment.ms",
    "segment.bytes",
    "max.message.bytes",
    "min.insync.replicas",
    "compression.type",
    "message.timestamp.type",
];

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// Every rule the spec breaks (empty when valid).
pub fn validate(mp: &MessagePipeline) -> Vec<String> {
    let spec = &mp.spec;
    let mut problems = Vec::new();
    let topic = &spec.kafka.topic;
    if spec.kafka.dlq_name() == topic.name {
        problems.push("spec.kafka.dlq.name must differ from spec.kafka.topic.name".to_owned());
    }
    for key in topic.config.keys() {
        if key == "retention.ms" {
            problems.push(
                "spec.kafka.topic.config: set retention with spec.kafka.topic.retentionMs".into(),
            );
        } else if key == "cleanup.policy" {
            problems.push("spec.kafka.topic.config: cleanup.policy must stay `delete` (compaction would drop events the indexer needs)".into());
        } else if !ALTERABLE_TOPIC_SETTINGS.contains(&key.as_str()) {
            problems.push(format!(
                "spec.kafka.topic.config: `{key}` is not a setting the operator manages (allowed: {})",
                ALTERABLE_TOPIC_SETTINGS.join(", ")
            ));
        }
    }
    let horizon_ms = i64::from(spec.indexer.tombstone_horizon_days) * DAY_MS;
    if horizon_ms <= topic.retention_ms {
        problems.push(format!(
            "spec.indexer.tombstoneHorizonDays ({}) must exceed the topic's retention ({} days): a replayed old event could bring a purged deletion back",
            spec.indexer.tombstone_horizon_days,
            topic.retention_ms as f64 / DAY_MS as f64
        ));
    }
    problems
}

/// Which cluster of a pipeline a claim is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Kafka,
    Search,
    MongoDb,
}

/// Something one pipeline owns on one of its clusters.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Claim {
    kind: Kind,
    /// What it is, for messages (`topic `x``).
    what: String,
}

fn claims(mp: &MessagePipeline) -> Vec<Claim> {
    let spec = &mp.spec;
    let claim = |kind, what| Claim { kind, what };
    vec![
        claim(Kind::Kafka, format!("topic `{}`", spec.kafka.topic.name)),
        claim(Kind::Kafka, format!("topic `{}`", spec.kafka.dlq_name())),
        claim(
            Kind::Kafka,
            format!("consumer group `{}`", spec.kafka.consumer_group),
        ),
        claim(
            Kind::Search,
            format!("alias `{}`", spec.elasticsearch.alias),
        ),
        claim(
            Kind::MongoDb,
            format!(
                "collection `{}.{}`",
                spec.mongodb.database, spec.mongodb.collection
            ),
        ),
    ]
}

/// One cluster as the claims check knows it: the address as the spec spells it (normalized),
/// and the cluster's own identity when it was read at that address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cluster {
    pub address: String,
    pub id: Option<String>,
}

/// A pipeline's clusters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Clusters {
    pub kafka: Cluster,
    pub search: Cluster,
    /// MongoDB's hosts from the URI (the operator does not connect to MongoDB: no identity).
    pub mongodb: Cluster,
}

/// Bootstrap lists name the same cluster in any order and case.
pub fn kafka_address(servers: &str) -> String {
    let mut s: Vec<String> = servers
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    s.sort();
    s.join(",")
}

pub fn search_address(url: &str) -> String {
    url.trim().trim_end_matches('/').to_ascii_lowercase()
}

impl Clusters {
    /// `mp`'s clusters, with the identities its status recorded at the spec's addresses.
    pub fn of(mp: &MessagePipeline) -> Self {
        Self::recorded(mp, mp.status.as_ref().map(|s| &s.external))
    }

    /// `mp`'s clusters, with the identities `external` records at the spec's addresses.
    pub fn recorded(mp: &MessagePipeline, external: Option<&ExternalStatus>) -> Self {
        let kafka = kafka_address(&mp.spec.kafka.bootstrap_servers);
        let search = search_address(&mp.spec.elasticsearch.url);
        let id = |recorded: Option<&messagepipeline_crd::ClusterIdentity>, address: &str| {
            recorded
                .filter(|r| r.address == address)
                .map(|r| r.id.clone())
        };
        Self {
            kafka: Cluster {
                id: id(external.and_then(|e| e.kafka.as_ref()), &kafka),
                address: kafka,
            },
            search: Cluster {
                id: id(external.and_then(|e| e.search.as_ref()), &search),
                address: search,
            },
            mongodb: Cluster {
                address: external.and_then(|e| e.mongodb.clone()).unwrap_or_default(),
                id: None,
            },
        }
    }

    fn get(&self, kind: Kind) -> &Cluster {
        match kind {
            Kind::Kafka => &self.kafka,
            Kind::Search => &self.search,
            Kind::MongoDb => &self.mongodb,
        }
    }
}

/// Whether two pipelines' clusters of one kind are one cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Same {
    Yes,
    No,
    /// Addressed differently and at least one identity not read yet.
    CannotTell,
}

fn same(kind: Kind, a: &Cluster, b: &Cluster) -> Same {
    match (&a.id, &b.id) {
        (Some(x), Some(y)) => {
            if x == y {
                Same::Yes
            } else {
                Same::No
            }
        }
        _ if !a.address.is_empty() && a.address == b.address => Same::Yes,
        // MongoDB has no identity the operator can read: hosts spelled differently count as
        // different servers (an unread address counts as none).
        _ if kind == Kind::MongoDb => Same::No,
        _ => Same::CannotTell,
    }
}

/// What keeps a pipeline from touching anything: claims of it that an older pipeline holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conflicts {
    /// Held by another pipeline on the same cluster.
    pub held: Vec<String>,
    /// Named the same as another pipeline's on a cluster that may be the same one: decided once
    /// both identities are read.
    pub undecided: Vec<String>,
}

impl Conflicts {
    pub fn is_empty(&self) -> bool {
        self.held.is_empty() && self.undecided.is_empty()
    }
}

/// Which of two pipelines keeps a contested claim: the older one; on a tie, the first by
/// namespace and name. Deterministic, so both reconciles agree.
fn precedes(a: &MessagePipeline, b: &MessagePipeline) -> bool {
    let key = |m: &MessagePipeline| {
        (
            m.metadata.creation_timestamp.clone().map(|t| t.0),
            m.namespace().unwrap_or_default(),
            m.name_any(),
        )
    };
    key(a).cmp(&key(b)) == Ordering::Less
}

/// The claims of `mp` (on `mine`, its clusters as just read) that `other` (on its clusters as
/// its status records them) also makes, each with whether the clusters are the same.
fn shared(mp: &MessagePipeline, mine: &Clusters, other: &MessagePipeline) -> Vec<(String, Same)> {
    let theirs_clusters = Clusters::of(other);
    let theirs = claims(other);
    claims(mp)
        .into_iter()
        .filter(|claim| theirs.contains(claim))
        .map(|claim| {
            let verdict = same(
                claim.kind,
                mine.get(claim.kind),
                theirs_clusters.get(claim.kind),
            );
            (claim.what, verdict)
        })
        .filter(|(_, verdict)| *verdict != Same::No)
        .collect()
}

/// Why `mp` may not touch anything: each claim of it that a pipeline preceding it makes on the
/// same cluster, or on one that may be the same.
pub fn conflicts<'a>(
    mp: &MessagePipeline,
    mine: &Clusters,
    all: impl IntoIterator<Item = &'a MessagePipeline>,
) -> Conflicts {
    let mut out = Conflicts::default();
    for other in all {
        if other.uid() == mp.uid() || !precedes(other, mp) {
            continue;
        }
        let by = format!(
            "MessagePipeline {}/{}",
            other.namespace().unwrap_or_default(),
            other.name_any()
        );
        for (what, verdict) in shared(mp, mine, other) {
            match verdict {
                Same::Yes => out.held.push(format!("{what} is already claimed by {by}")),
                _ => out.undecided.push(format!(
                    "{what} is also claimed by {by} on a cluster addressed differently; whether it is the same cluster is decided once both are reachable"
                )),
            }
        }
    }
    out
}

/// Whether any pipeline but `mp` claims `what` (as [`claims`] names it, e.g. ``topic `x` ``)
/// on `mp`'s cluster, or on one that may be it, whatever their age: what another pipeline
/// claims is never deleted.
pub fn claimed_by_another<'a>(
    mp: &MessagePipeline,
    mine: &Clusters,
    what: &str,
    all: impl IntoIterator<Item = &'a MessagePipeline>,
) -> Option<String> {
    all.into_iter()
        .filter(|other| other.uid() != mp.uid())
        .find(|other| shared(mp, mine, other).iter().any(|(w, _)| w == what))
        .map(|other| {
            format!(
                "{}/{}",
                other.namespace().unwrap_or_default(),
                other.name_any()
            )
        })
}

/// How [`claims`] names a topic.
pub fn topic_claim(name: &str) -> String {
    format!("topic `{name}`")
}

/// How [`claims`] names an alias.
pub fn alias_claim(name: &str) -> String {
    format!("alias `{name}`")
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use messagepipeline_crd::MessagePipelineSpec;
    use serde_json::json;

    use super::*;

    fn mp(name: &str, created: i64, patch: serde_json::Value) -> MessagePipeline {
        let mut spec = json!({
            "image": "i",
            "api": {"auth": {"apiKeysSecretRef": {"name": "k", "key": "k"}}},
            "mongodb": {"uriSecretRef": {"name": "m", "key": "u"}},
            "kafka": {"bootstrapServers": "b1:9092,b2:9092"},
            "elasticsearch": {"url": "http://es:9200"}
        });
        json_patch(&mut spec, patch);
        let mut m = MessagePipeline::new(
            name,
            serde_json::from_value::<MessagePipelineSpec>(spec).unwrap(),
        );
        m.metadata.namespace = Some("ns".into());
        m.metadata.uid = Some(format!("uid-{name}"));
        m.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(created).unwrap(),
        ));
        m
    }

    fn json_patch(target: &mut serde_json::Value, patch: serde_json::Value) {
        if let (Some(t), serde_json::Value::Object(p)) = (target.as_object_mut(), patch.clone()) {
            for (k, v) in p {
                match t.get_mut(&k) {
                    Some(existing) if existing.is_object() && v.is_object() => {
                        json_patch(existing, v)
                    }
                    _ => {
                        t.insert(k, v);
                    }
                }
            }
        }
    }

    #[test]
    fn spec_rules() {
        let cases: Vec<(serde_json::Value, Vec<&str>)> = vec![
            (json!({}), vec![]),
            (
                json!({"kafka": {"dlq": {"name": "message-events-v1-prod"}}}),
                vec!["must differ"],
            ),
            (
                json!({"kafka": {"topic": {"config": {"segment.ms": "3600000", "retention.ms": "1"}}}}),
                vec!["retentionMs"],
            ),
            (
                json!({"kafka": {"topic": {"config": {"cleanup.policy": "compact"}}}}),
                vec!["cleanup.policy"],
            ),
            (
                json!({"kafka": {"topic": {"config": {"unclean.leader.election.enable": "true"}}}}),
                vec!["not a setting"],
            ),
            (
                json!({"indexer": {"tombstoneHorizonDays": 7}}),
                vec!["must exceed"],
            ),
        ];
        for (patch, expected) in cases {
            let problems = validate(&mp("a", 1, patch.clone()));
            assert_eq!(problems.len(), expected.len(), "{patch}: {problems:?}");
            for (p, e) in problems.iter().zip(expected) {
                assert!(p.contains(e), "{patch}: {p}");
            }
        }
    }

    fn with_identities(mut m: MessagePipeline, kafka: &str, search: &str) -> MessagePipeline {
        use messagepipeline_crd::{ClusterIdentity, MessagePipelineStatus};
        let clusters = Clusters::of(&m);
        let mut status = MessagePipelineStatus::default();
        status.external.kafka = Some(ClusterIdentity {
            address: clusters.kafka.address,
            id: kafka.into(),
        });
        status.external.search = Some(ClusterIdentity {
            address: clusters.search.address,
            id: search.into(),
        });
        m.status = Some(status);
        m
    }

    #[test]
    fn the_older_pipeline_keeps_its_claims() {
        let first = mp("first", 100, json!({}));
        // Same cluster written differently, same topic: conflict.
        let second = mp(
            "second",
            200,
            json!({"kafka": {"bootstrapServers": "B2:9092, b1:9092"}, "elasticsearch": {"alias": "other"}, "mongodb": {"database": "other"}}),
        );
        let all = vec![first.clone(), second.clone()];
        assert!(conflicts(&first, &Clusters::of(&first), &all).is_empty());
        let c = conflicts(&second, &Clusters::of(&second), &all);
        assert_eq!(c.held.len(), 3, "{c:?}"); // topic, dlq, group; the alias differs
        assert!(c.held[0].contains(
            "topic `message-events-v1-prod` is already claimed by MessagePipeline ns/first"
        ));

        // Another topic and group, same alias on the same engine.
        let third = mp(
            "third",
            300,
            json!({"kafka": {"topic": {"name": "t3"}, "consumerGroup": "g3"}, "elasticsearch": {"url": "HTTP://es:9200/"}, "mongodb": {"database": "d3"}}),
        );
        let c = conflicts(
            &third,
            &Clusters::of(&third),
            &[first.clone(), third.clone()],
        );
        assert_eq!(
            c.held,
            ["alias `messages` is already claimed by MessagePipeline ns/first"]
        );
        assert!(c.undecided.is_empty());
    }

    #[test]
    fn clusters_are_compared_by_identity_not_by_the_spelling_of_their_address() {
        // Two spellings of one Kafka cluster and one engine (`kafka:9092` and
        // `kafka.ns.svc:9092`): the same identities, so the same claims conflict.
        let first = with_identities(mp("first", 100, json!({})), "kafka-1", "es-1");
        let copy = mp(
            "copy",
            200,
            json!({"kafka": {"bootstrapServers": "kafka.ns.svc:9092"}, "elasticsearch": {"url": "http://es.ns.svc:9200"}, "mongodb": {"database": "copy"}}),
        );
        let copy_known = with_identities(copy.clone(), "kafka-1", "es-1");
        let c = conflicts(
            &copy,
            &Clusters::of(&copy_known),
            std::slice::from_ref(&first),
        );
        assert_eq!(c.held.len(), 4, "topic, dlq, group and alias: {c:?}");
        assert!(c.undecided.is_empty());

        // Before its own identities are read: it cannot tell, so it waits.
        let c = conflicts(&copy, &Clusters::of(&copy), std::slice::from_ref(&first));
        assert!(c.held.is_empty());
        assert_eq!(c.undecided.len(), 4, "{c:?}");

        // Another cluster behind another address: nothing shared.
        let elsewhere = with_identities(copy.clone(), "kafka-2", "es-2");
        assert!(
            conflicts(
                &copy,
                &Clusters::of(&elsewhere),
                std::slice::from_ref(&first)
            )
            .is_empty()
        );

        // The same address with identities that differ (the cluster behind it was replaced):
        // identities decide.
        let replaced = with_identities(mp("replaced", 200, json!({})), "kafka-9", "es-9");
        assert!(
            conflicts(
                &replaced,
                &Clusters::of(&replaced),
                std::slice::from_ref(&first)
            )
            .is_empty()
        );
    }

    #[test]
    fn one_collection_is_claimed_by_one_pipeline() {
        use messagepipeline_crd::MessagePipelineStatus;
        let on = |m: MessagePipeline, hosts: &str| {
            let mut m = m;
            let mut status = MessagePipelineStatus::default();
            status.external.mongodb = Some(hosts.into());
            m.status = Some(status);
            m
        };
        let other_names = json!({"kafka": {"topic": {"name": "t2"}, "consumerGroup": "g2"}, "elasticsearch": {"alias": "a2"}});
        let first = on(mp("first", 100, json!({})), "mongo:27017");
        let second = on(mp("second", 200, other_names.clone()), "mongo:27017");
        let c = conflicts(
            &second,
            &Clusters::of(&second),
            std::slice::from_ref(&first),
        );
        assert_eq!(
            c.held,
            [
                "collection `message_pipeline.messages` is already claimed by MessagePipeline ns/first"
            ]
        );
        let elsewhere = on(mp("elsewhere", 200, other_names), "mongo-2:27017");
        assert!(conflicts(&elsewhere, &Clusters::of(&elsewhere), &[first]).is_empty());
    }

    #[test]
    fn what_another_pipeline_claims_is_never_anothers_to_delete() {
        let first = mp("first", 100, json!({}));
        // A younger pipeline refused for the same topic: deleting it must not touch the topic,
        // nor may deleting the older one while the younger still names it.
        let copy = mp("copy", 200, json!({}));
        let all = [first.clone(), copy.clone()];
        let topic = topic_claim("message-events-v1-prod");
        assert_eq!(
            claimed_by_another(&copy, &Clusters::of(&copy), &topic, &all).as_deref(),
            Some("ns/first")
        );
        assert_eq!(
            claimed_by_another(&first, &Clusters::of(&first), &topic, &all).as_deref(),
            Some("ns/copy")
        );
        let alone = [first.clone()];
        assert_eq!(
            claimed_by_another(&first, &Clusters::of(&first), &topic, &alone),
            None
        );
    }
}
