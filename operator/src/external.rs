//! External state: what a pipeline has outside Kubernetes, as its status records it. The
//! identity of each cluster it uses (what the claims check compares, module `validate`), the
//! topics it has seen and which of them it created (what `deletionPolicy: Delete` may remove),
//! and topics lost since (deleted behind its back and made again, empty).
//!
//! The record is what makes deletion safe: the operator deletes a topic only when this record
//! says this pipeline created it, and an index or template only when the engine's `_meta` names
//! this pipeline; a pipeline refused from the start records nothing as created.

use kube::ResourceExt;
use messagepipeline_crd::{
    ClusterIdentity, ExternalStatus, MessagePipeline, MessagePipelineStatus, TopicRecord,
    TopicsLost,
};
use pipeline_contract::install;

use crate::controller::{Context, Error, Search, secret_value};
use crate::kafka;
use crate::validate::{kafka_address, search_address};

/// `previous` with the identity of each cluster at the spec's addresses: the one recorded
/// when the address is the same, else read now (Kafka's cluster id, the engine's cluster uuid,
/// MongoDB's hosts from the URI's Secret); what cannot be read stays unknown.
pub async fn identified(
    ctx: &Context,
    mp: &MessagePipeline,
    previous: &ExternalStatus,
    kafka_config: &Result<rdkafka::ClientConfig, Error>,
    search: &Result<Search, Error>,
) -> ExternalStatus {
    let mut external = previous.clone();
    let at = kafka_address(&mp.spec.kafka.bootstrap_servers);
    if !known_at(previous.kafka.as_ref(), &at) {
        let read = match kafka_config {
            Ok(config) => kafka::cluster_id(config).await,
            Err(_) => None,
        };
        external.kafka = identity(previous.kafka.as_ref(), &at, read);
    }
    let at = search_address(&mp.spec.elasticsearch.url);
    if !known_at(previous.search.as_ref(), &at) {
        let read = match search {
            Ok((http, endpoint)) => {
                install::cluster_uuid(http, endpoint)
                    .await
                    .unwrap_or_else(|error| {
                        tracing::debug!(%error, "reading the search cluster's uuid");
                        None
                    })
            }
            Err(_) => None,
        };
        external.search = identity(previous.search.as_ref(), &at, read);
    }
    let uri = &mp.spec.mongodb.uri_secret_ref;
    let namespace = mp.namespace().unwrap_or_default();
    if let Ok(uri) = secret_value(ctx, &namespace, &uri.name, &uri.key).await {
        external.mongodb = Some(mongodb_hosts(&uri));
    }
    external
}

/// The hosts of a MongoDB URI, lower case and sorted, without scheme, credentials, database or
/// options: the same servers however the URI lists them.
pub fn mongodb_hosts(uri: &str) -> String {
    let rest = uri.split_once("://").map_or(uri, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let hosts = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let mut hosts: Vec<String> = hosts
        .split(',')
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect();
    hosts.sort();
    hosts.join(",")
}

/// `recorded` when it was read at `address`, else `read`'s answer (`None`: not readable now).
pub fn identity(
    recorded: Option<&ClusterIdentity>,
    address: &str,
    read: Option<String>,
) -> Option<ClusterIdentity> {
    match (recorded, read) {
        (_, Some(id)) => Some(ClusterIdentity {
            address: address.to_owned(),
            id,
        }),
        (Some(r), None) if r.address == address => Some(r.clone()),
        _ => None,
    }
}

/// Whether the identity recorded for a cluster is the one at `address` (no need to read it).
pub fn known_at(recorded: Option<&ClusterIdentity>, address: &str) -> bool {
    recorded.is_some_and(|r| r.address == address)
}

/// What the topic reconcile means for the record: every topic of the spec now in place is
/// seen (created by this pipeline when the reconcile just made it, or when it made it before);
/// a topic seen before that had to be made again was lost, and the index may miss what it held
/// until a generation above the one it pointed at then is built (`wanted`: the generation the
/// spec asks for; `current`: the alias's).
pub fn topics_reconciled(
    previous: &ExternalStatus,
    in_place: &[String],
    created: &[String],
    (current, wanted): (Option<u32>, u32),
    now: &str,
) -> (Vec<TopicRecord>, Option<TopicsLost>) {
    let mut records = previous.topics.clone();
    let mut lost = Vec::new();
    for name in in_place {
        let made_now = created.contains(name);
        match records.iter_mut().find(|r| &r.name == name) {
            Some(record) => {
                if made_now {
                    lost.push(name.clone());
                    record.created = true;
                }
            }
            None => records.push(TopicRecord {
                name: name.clone(),
                created: made_now,
            }),
        }
    }
    records.sort_by(|a, b| a.name.cmp(&b.name));
    let mut topics_lost = previous.topics_lost.clone();
    if !lost.is_empty() {
        let record = topics_lost.get_or_insert_with(|| TopicsLost {
            topics: Vec::new(),
            index_generation: current.unwrap_or(0),
            time: now.to_owned(),
        });
        for name in lost {
            if !record.topics.contains(&name) {
                record.topics.push(name);
            }
        }
        record.topics.sort();
    }
    // A rebuild asked for above the generation of the loss: the rebuild's conditions say the
    // rest.
    let topics_lost = topics_lost.filter(|l| wanted <= l.index_generation);
    (records, topics_lost)
}

/// [`topics_reconciled`] for `mp`'s spec after a topic reconcile that created `created`.
pub fn topics_of(
    mp: &MessagePipeline,
    previous: &MessagePipelineStatus,
    created: &[String],
    now: &str,
) -> (Vec<TopicRecord>, Option<TopicsLost>) {
    let in_place: Vec<String> = kafka::wanted(&mp.spec).map(|t| t.name).to_vec();
    let generations = (
        previous.index.as_ref().and_then(|i| i.generation),
        mp.spec.elasticsearch.index_generation.unwrap_or(1),
    );
    topics_reconciled(&previous.external, &in_place, created, generations, now)
}

/// The reason of `TopicsReady` when topics were lost.
pub const TOPIC_LOST: &str = "TopicLost";

/// What a loss asks of the user.
pub fn lost_message(lost: &TopicsLost) -> String {
    format!(
        "topic(s) {} were deleted outside the operator at {} and have been created again, empty: \
         changes they held that the indexer had not applied may be missing from the index; raise \
         spec.elasticsearch.indexGeneration to {} to rebuild it from MongoDB",
        lost.topics.join(", "),
        lost.time,
        lost.index_generation + 1
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mongodb_hosts_are_the_servers_whatever_the_uri_says_besides() {
        let cases = [
            (
                "mongodb://u:p@B:27017,a:27017/db?tls=true",
                "a:27017,b:27017",
            ),
            ("mongodb://a:27017,b:27017", "a:27017,b:27017"),
            (
                "mongodb+srv://user@Cluster.example.com/",
                "cluster.example.com",
            ),
            ("a:1", "a:1"),
        ];
        for (uri, hosts) in cases {
            assert_eq!(mongodb_hosts(uri), hosts, "{uri}");
        }
    }

    #[test]
    fn an_identity_is_read_again_only_when_the_address_changes() {
        let at = |address: &str, id: &str| ClusterIdentity {
            address: address.into(),
            id: id.into(),
        };
        let recorded = at("k:9092", "c1");
        assert!(known_at(Some(&recorded), "k:9092"));
        assert!(!known_at(Some(&recorded), "k2:9092"));
        assert!(!known_at(None, "k:9092"));
        // Read: the new one, at the address it was read at.
        assert_eq!(
            identity(Some(&recorded), "k2:9092", Some("c2".into())),
            Some(at("k2:9092", "c2"))
        );
        // Not readable: the recorded one only when it is of this address.
        assert_eq!(
            identity(Some(&recorded), "k:9092", None),
            Some(recorded.clone())
        );
        assert_eq!(identity(Some(&recorded), "k2:9092", None), None);
    }

    #[test]
    fn a_topic_made_again_after_it_was_seen_was_lost_until_a_rebuild_is_asked_for() {
        let names = ["t".to_owned(), "t.dlq".to_owned()];
        let now = "2026-12-07T00:00:00Z";
        // First reconcile: both made by this pipeline.
        let (records, lost) =
            topics_reconciled(&ExternalStatus::default(), &names, &names, (None, 1), now);
        assert_eq!(records.iter().filter(|r| r.created).count(), 2);
        assert_eq!(lost, None);
        let previous = ExternalStatus {
            topics: records,
            ..ExternalStatus::default()
        };
        // Steady: nothing made, nothing lost.
        let (same, lost) = topics_reconciled(&previous, &names, &[], (Some(1), 1), now);
        assert_eq!((same.clone(), lost), (previous.topics.clone(), None));
        // The events topic deleted behind the operator's back and made again.
        let (_, lost) = topics_reconciled(&previous, &names, &["t".to_owned()], (Some(1), 1), now);
        let lost = lost.expect("lost");
        assert_eq!(
            (lost.topics.clone(), lost.index_generation),
            (vec!["t".to_owned()], 1)
        );
        assert!(lost_message(&lost).contains("indexGeneration to 2"));
        let after = ExternalStatus {
            topics_lost: Some(lost),
            ..previous.clone()
        };
        // It stays said until a rebuild above generation 1 is asked for.
        assert!(
            topics_reconciled(&after, &names, &[], (Some(1), 1), now)
                .1
                .is_some()
        );
        assert!(
            topics_reconciled(&after, &names, &[], (Some(1), 2), now)
                .1
                .is_none()
        );

        // A topic that was there before the pipeline (not made by it) stays not created.
        let (records, _) = topics_reconciled(
            &ExternalStatus::default(),
            &names,
            &["t.dlq".to_owned()],
            (None, 1),
            now,
        );
        assert_eq!(
            records,
            [
                TopicRecord {
                    name: "t".into(),
                    created: false
                },
                TopicRecord {
                    name: "t.dlq".into(),
                    created: true
                }
            ]
        );
    }
}
