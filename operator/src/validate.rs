//! Validate: what the schema cannot say, checked before anything is touched; and claims: a
//! topic, consumer group or alias belongs to one MessagePipeline per cluster.
//!
//! Both are pure: the controller passes the resource (and, for claims, every MessagePipeline it
//! knows) and turns the answer into a `Ready=False` condition with the reason.

use std::cmp::Ordering;

use kube::ResourceExt;
use messagepipeline_crd::MessagePipeline;

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

/// Something one pipeline owns on a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Claim {
    Topic { cluster: String, name: String },
    Group { cluster: String, name: String },
    Alias { cluster: String, name: String },
}

impl Claim {
    fn describe(&self) -> String {
        match self {
            Self::Topic { name, .. } => format!("topic `{name}`"),
            Self::Group { name, .. } => format!("consumer group `{name}`"),
            Self::Alias { name, .. } => format!("alias `{name}`"),
        }
    }
}

/// Bootstrap lists name the same cluster in any order and case.
fn kafka_cluster(servers: &str) -> String {
    let mut s: Vec<String> = servers
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    s.sort();
    s.join(",")
}

fn search_cluster(url: &str) -> String {
    url.trim().trim_end_matches('/').to_ascii_lowercase()
}

fn claims(mp: &MessagePipeline) -> Vec<Claim> {
    let k = kafka_cluster(&mp.spec.kafka.bootstrap_servers);
    vec![
        Claim::Topic {
            cluster: k.clone(),
            name: mp.spec.kafka.topic.name.clone(),
        },
        Claim::Topic {
            cluster: k.clone(),
            name: mp.spec.kafka.dlq_name(),
        },
        Claim::Group {
            cluster: k,
            name: mp.spec.kafka.consumer_group.clone(),
        },
        Claim::Alias {
            cluster: search_cluster(&mp.spec.elasticsearch.url),
            name: mp.spec.elasticsearch.alias.clone(),
        },
    ]
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

/// Why `mp` may not touch anything: each claim of it held by a pipeline that precedes it.
pub fn conflicts<'a>(
    mp: &MessagePipeline,
    all: impl IntoIterator<Item = &'a MessagePipeline>,
) -> Vec<String> {
    let mine = claims(mp);
    let mut out = Vec::new();
    for other in all {
        if other.uid() == mp.uid() || !precedes(other, mp) {
            continue;
        }
        let theirs = claims(other);
        for claim in &mine {
            if theirs.contains(claim) {
                out.push(format!(
                    "{} is already claimed by MessagePipeline {}/{}",
                    claim.describe(),
                    other.namespace().unwrap_or_default(),
                    other.name_any()
                ));
            }
        }
    }
    out
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

    #[test]
    fn the_older_pipeline_keeps_its_claims() {
        let first = mp("first", 100, json!({}));
        // Same cluster written differently, same topic: conflict.
        let second = mp(
            "second",
            200,
            json!({"kafka": {"bootstrapServers": "B2:9092, b1:9092"}, "elasticsearch": {"alias": "other"}}),
        );
        let all = vec![first.clone(), second.clone()];
        assert!(conflicts(&first, &all).is_empty());
        let c = conflicts(&second, &all);
        assert_eq!(c.len(), 3, "{c:?}"); // topic, dlq, group; the alias differs
        assert!(c[0].contains(
            "topic `message-events-v1-prod` is already claimed by MessagePipeline ns/first"
        ));

        // Another topic and group, same alias on the same engine.
        let third = mp(
            "third",
            300,
            json!({"kafka": {"topic": {"name": "t3"}, "consumerGroup": "g3"}, "elasticsearch": {"url": "HTTP://es:9200/"}}),
        );
        let c = conflicts(&third, &[first.clone(), third.clone()]);
        assert_eq!(
            c,
            ["alias `messages` is already claimed by MessagePipeline ns/first"]
        );

        // Another Kafka cluster and engine: no conflict at all.
        let fourth = mp(
            "fourth",
            400,
            json!({"kafka": {"bootstrapServers": "other:9092"}, "elasticsearch": {"url": "http://es2:9200"}}),
        );
        assert!(conflicts(&fourth, &[first, fourth.clone()]).is_empty());
    }
}
