//! Pipelines claiming what another holds. In a namespace of their own, `kafka` and `search`
//! Services (no selector, endpoints at the rig's address) give chat's Kafka and search engine
//! other names, as `kafka:9092` and `kafka.ns.svc:9092` are for one cluster. A copy of chat on
//! those names (same topic, alias and collection; `deletionPolicy: Delete`) and one sharing only
//! the topic (`Retain`) are refused; deleting both leaves chat's topic, DLQ, template, index and
//! data as they were, and chat Ready.

use std::time::{Duration, Instant};

use e2e::cluster::{Traffic, condition, reason};
use e2e::rig::rig;
use kube::api::{DeleteParams, Patch, PatchParams};
use messagepipeline_crd::MessagePipeline;
use serde_json::{Value, json};

use crate::Figures;
use crate::world::{READY_WITHIN, World, until};

/// A Service `name` in `namespace` whose one endpoint is the rig's address at `port`.
async fn alias_service(world: &World, namespace: &str, name: &str, port: u16) {
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let params = PatchParams::apply("faults").force();
    let service = json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
        "spec": {"ports": [{"name": "p", "port": port, "targetPort": port, "protocol": "TCP"}]},
    });
    world
        .install
        .api_in::<Service>(namespace)
        .patch(name, &params, &Patch::Apply(&service))
        .await
        .unwrap();
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": "p", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [rig().rig_address()]}],
    });
    world
        .install
        .api_in::<EndpointSlice>(namespace)
        .patch(name, &params, &Patch::Apply(&slice))
        .await
        .unwrap();
}

fn port_of(address: &str) -> u16 {
    address
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("no port in {address}"))
}

pub async fn run(world: &World) -> Figures {
    let started = Instant::now();
    let base = world.base().await;
    let traffic = Traffic::start(&base, 2, Duration::from_millis(20));
    let namespace = world.install.namespace("faults-claims").await;
    let endpoints = rig().pod_endpoints();
    let (kafka_port, search_port) = (port_of(endpoints.kafka), port_of(endpoints.search_url));
    alias_service(world, &namespace, "kafka", kafka_port).await;
    alias_service(world, &namespace, "search", search_port).await;
    let kafka = format!("kafka.{namespace}.svc:{kafka_port}");
    let search = format!("http://search.{namespace}.svc:{search_port}");

    let chat: MessagePipeline = world
        .chat
        .mps(&world.install)
        .get(&world.chat.name)
        .await
        .unwrap();
    let spec: Value = serde_json::to_value(&chat.spec).unwrap();
    let full_copy = json!({
        "kafka": {"bootstrapServers": kafka, "topic": spec["kafka"]["topic"], "consumerGroup": spec["kafka"]["consumerGroup"]},
        "elasticsearch": {"alias": spec["elasticsearch"]["alias"]},
        "mongodb": {"database": spec["mongodb"]["database"]},
        "deletionPolicy": "Delete",
    });
    let topic_only = json!({
        "kafka": {"bootstrapServers": kafka, "topic": spec["kafka"]["topic"]},
        "deletionPolicy": "Retain",
    });
    let mut refused = Vec::new();
    for (name, patch, claims) in [
        (
            "chat-copy",
            full_copy,
            &["topic", "alias", "collection"][..],
        ),
        ("chat-topic", topic_only, &["topic"][..]),
    ] {
        let copy = world
            .install
            .apply_pipeline_in(&namespace, name, &search, patch)
            .await;
        let mp = until(world, &copy, "ResourceConflict", READY_WITHIN, |mp| {
            reason(mp, "Ready") == Some("ResourceConflict")
        })
        .await;
        assert_eq!(condition(&mp, "Ready"), Some("False"));
        let message = &mp.status.as_ref().unwrap().conditions[0].message;
        for claim in claims {
            assert!(message.contains(claim), "{name}: {claim} in {message}");
        }
        assert!(
            mp.status.as_ref().unwrap().external.topics.is_empty(),
            "{name} made nothing"
        );
        refused.push(copy);
    }
    // Deleting the refused ones, under each policy, must not touch chat's state.
    for copy in &refused {
        copy.mps(&world.install)
            .delete(&copy.name, &DeleteParams::default())
            .await
            .unwrap();
    }
    for copy in &refused {
        let api = copy.mps(&world.install);
        crate::world::eventually(
            &format!("{} deleted", copy.name),
            Duration::from_secs(90),
            || async { api.get_opt(&copy.name).await.ok()?.is_none().then_some(()) },
        )
        .await;
    }
    traffic.progresses(50, Duration::from_secs(60)).await;
    let (acked, writes, _) = traffic.stop().await;
    let documents = world.check("claims", &acked).await;
    // chat still holds every claim: a pipeline copied again is refused again.
    Figures {
        class: "claims",
        seconds: started.elapsed().as_secs_f64(),
        writes,
        faults: format!(
            "a copy of chat (topic, alias, collection; Delete) and one sharing its topic (Retain) on {kafka} and {search}: both refused, both deleted"
        ),
        documents,
    }
}
