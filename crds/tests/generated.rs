//! The committed CRD YAML must be what `crdgen` prints today: a schema change without
//! regenerating would ship a CRD the operator's types do not match.

use std::path::PathBuf;

#[test]
fn committed_crd_yaml_is_current() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let wanted = messagepipeline_crd::crd_yaml();
    for copy in [
        "crds/messagepipeline.yaml",
        "charts/message-pipeline-operator/crds/messagepipeline.yaml",
    ] {
        let committed = std::fs::read_to_string(root.join(copy))
            .unwrap_or_else(|e| panic!("reading {copy}: {e}"));
        assert!(
            committed == wanted,
            "{copy} is stale: run `cargo run -p messagepipeline-crd --bin crdgen > {copy}`"
        );
    }
}

#[test]
fn a_minimal_spec_gets_every_default() {
    let minimal = serde_json::json!({
        "image": "registry.example/message-pipeline:0.1.0",
        "api": {"auth": {"apiKeysSecretRef": {"name": "api-keys", "key": "keys.yaml"}}},
        "mongodb": {"uriSecretRef": {"name": "mongodb", "key": "uri"}},
        "kafka": {"bootstrapServers": "kafka:9092"},
        "elasticsearch": {"url": "http://search:9200"}
    });
    let spec: messagepipeline_crd::MessagePipelineSpec = serde_json::from_value(minimal).unwrap();
    assert_eq!(spec.kafka.topic.name, "message-events-v1-prod");
    assert_eq!(spec.kafka.topic.retention_ms, 7 * 24 * 3600 * 1000);
    assert_eq!(spec.kafka.dlq_name(), "message-events-v1-prod.dlq");
    assert_eq!(spec.kafka.consumer_group, "message-elasticsearch-indexer");
    assert_eq!(spec.elasticsearch.alias, "messages");
    assert_eq!((spec.api.replicas, spec.indexer.replicas), (2, 2));
    assert_eq!(spec.indexer.tombstone_horizon_days, 21);
    assert_eq!(
        spec.deletion_policy,
        messagepipeline_crd::DeletionPolicy::Retain
    );
}
