//! The api-server's worker Lease on the rig's API server: created with the pipeline's labels and
//! `ready=true` when the pipeline identity is in the environment, deleted on a clean stop.

mod common;

use std::time::Duration;

use common::{KEY_A, Server, Setup};
use e2e::{rig::rig, wait};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use pipeline_contract::worker::lease;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_holds_its_lease_while_it_runs() {
    let client = rig().kube_client().await;
    let namespace = rig().create_namespace(&client, "lease-api").await;
    let kubeconfig = rig().kubeconfig().to_owned();
    let setup = Setup::new("lease-api").await;
    let mut server = Server::start_with(
        &setup,
        &[
            ("MP_PIPELINE_NAME", "orders"),
            ("MP_PIPELINE_NAMESPACE", namespace.as_str()),
            ("POD_NAME", "orders-api-0"),
            ("KUBECONFIG", kubeconfig.as_str()),
        ],
    )
    .await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace);
    let lease = wait::until(
        "the api-server's Lease",
        Duration::from_secs(30),
        || async { leases.get_opt("orders-api-orders-api-0").await.unwrap() },
    )
    .await;
    let labels = lease.metadata.labels.unwrap();
    assert_eq!(labels["messagepipeline.io/pipeline"], "orders");
    assert_eq!(labels["messagepipeline.io/role"], "api");
    assert_eq!(
        lease.metadata.annotations.unwrap()["messagepipeline.io/ready"],
        "true"
    );
    let spec = lease.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("orders-api-0"));
    assert!(spec.renew_time.is_some());

    assert!(server.terminate(), "clean exit");
    assert!(
        leases
            .get_opt("orders-api-orders-api-0")
            .await
            .unwrap()
            .is_none(),
        "deleted on a clean stop"
    );
    rig().delete_namespace(&client, &namespace).await;
}

/// The api-server's Lease once it carries a refusal: (reason, message).
async fn refusal(leases: &Api<Lease>, name: &str) -> (String, String) {
    wait::until(
        "a refusal on the api-server's Lease",
        Duration::from_secs(60),
        || async {
            let a = leases.get_opt(name).await.ok()??.metadata.annotations?;
            Some((
                a.get(lease::ANNOTATION_REFUSAL)?.clone(),
                a.get(lease::ANNOTATION_REFUSAL_MESSAGE)?.clone(),
            ))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_kafka_refuses_says_so_on_the_lease_and_writes_are_still_taken() {
    let client = rig().kube_client().await;
    let namespace = rig().create_namespace(&client, "lease-api-refused").await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace);
    let kubeconfig = rig().kubeconfig().to_owned();
    // The topic is outside the prefix mp-api may write (devstack/kafka/acls).
    let setup = Setup::new("lease-acl").await;
    let secured = |pod: &'static str, password: &'static str| {
        vec![
            ("MP_PIPELINE_NAME", "orders"),
            ("MP_PIPELINE_NAMESPACE", namespace.as_str()),
            ("POD_NAME", pod),
            ("KUBECONFIG", kubeconfig.as_str()),
            ("KAFKA_BOOTSTRAP_SERVERS", rig().kafka_secure()),
            ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
            ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
            ("KAFKA_SASL_USERNAME", "mp-api"),
            ("KAFKA_SASL_PASSWORD", password),
            ("KAFKA_SSL_CA_LOCATION", rig().ca_cert()),
        ]
    };
    let cases = [
        (
            "orders-api-acl",
            secured("orders-api-acl", rig().kafka_password("api")),
            "KafkaAuthorizationFailed",
        ),
        (
            "orders-api-login",
            secured("orders-api-login", "not-the-password"),
            "KafkaAuthenticationFailed",
        ),
    ];
    for (pod, env, want) in cases {
        let mut server = Server::start_with(&setup, &env).await;
        let created = server
            .client(KEY_A)
            .create(uuid::Uuid::new_v4(), "kept in MongoDB until Kafka takes it")
            .await;
        assert!(created["id"].is_string(), "{created}");
        let (reason, message) = refusal(&leases, &format!("orders-api-{pod}")).await;
        assert_eq!(reason, want, "{pod}: {message}");
        assert!(message.contains(rig().kafka_secure()), "{pod}: {message}");
        assert!(!message.contains("not-the-password"), "{pod}: {message}");
        let ready = reqwest::get(format!("{}/ready", server.base))
            .await
            .unwrap();
        assert_eq!(ready.status(), 200, "{pod}: writes are still taken");
        assert!(server.terminate(), "clean exit");
    }
    rig().delete_namespace(&client, &namespace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_mongodb_refuses_holds_a_lease_that_says_so_and_serves_nothing() {
    let client = rig().kube_client().await;
    let namespace = rig().create_namespace(&client, "lease-api-mongo").await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace);
    let kubeconfig = rig().kubeconfig().to_owned();
    let setup = Setup::new("lease-mongo").await;
    let cases = [
        (
            "orders-api-login",
            rig().mongodb_secure_uri(Some(("api", "not-the-password")), Some(rig().ca_cert())),
            "MongoDBAuthenticationFailed",
        ),
        // No CA file: the rig's CA is not among the system roots.
        (
            "orders-api-ca",
            rig().mongodb_secure_uri(Some(("api", rig().mongodb_password("api"))), None),
            "MongoDBTLSUntrusted",
        ),
    ];
    let mut servers: Vec<Server> = cases
        .iter()
        .map(|(pod, uri, _)| {
            Server::launch(
                &setup,
                &[
                    ("MP_PIPELINE_NAME", "orders"),
                    ("MP_PIPELINE_NAMESPACE", namespace.as_str()),
                    ("POD_NAME", pod),
                    ("KUBECONFIG", kubeconfig.as_str()),
                    ("MONGODB_URI", uri.as_str()),
                ],
            )
        })
        .collect();
    for ((pod, uri, want), server) in cases.iter().zip(&servers) {
        let name = format!("orders-api-{pod}");
        let (reason, message) = refusal(&leases, &name).await;
        assert_eq!(reason, *want, "{message}");
        let host = uri.rsplit('@').next().unwrap().split('/').next().unwrap();
        assert!(message.contains(host), "names the server: {message}");
        assert!(!message.contains("not-the-password"), "{message}");
        assert!(
            !message.contains(rig().mongodb_password("api")),
            "{message}"
        );
        let held = leases.get(&name).await.unwrap();
        assert_eq!(
            held.metadata.annotations.unwrap()[lease::ANNOTATION_READY],
            "false"
        );
        assert!(
            reqwest::get(format!("{}/ready", server.base))
                .await
                .is_err(),
            "nothing is served while MongoDB refuses"
        );
    }
    for server in &mut servers {
        assert!(server.terminate(), "a clean exit while refused");
    }
    rig().delete_namespace(&client, &namespace).await;
}
