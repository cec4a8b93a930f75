//! The api-server's worker Lease on the rig's API server: created with the pipeline's labels and
//! `ready=true` when the pipeline identity is in the environment, deleted on a clean stop.

mod common;

use std::time::Duration;

use common::{Server, Setup};
use e2e::{rig::rig, wait};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;

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
