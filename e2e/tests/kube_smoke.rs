//! The rig's Kubernetes control plane does what the operator relies on: CRDs that become
//! established, watches, server-side apply on the status subresource, garbage collection of
//! owned objects, Leases, namespace deletion, and `kubectl get` of a custom resource.
//!
//! Pods on the rig's node are `node_smoke.rs`'s.

use std::time::Duration;

use e2e::{rig::rig, wait};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, CustomResource, CustomResourceExt, Resource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

const MANAGER: &str = "e2e-smoke";

/// A throwaway kind, so these tests never touch the real MessagePipeline CRD.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "smoke.messagepipeline.io",
    version = "v1",
    kind = "Widget",
    namespaced,
    status = "WidgetStatus",
    shortname = "wdg"
)]
pub struct WidgetSpec {
    size: i32,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema, PartialEq)]
pub struct WidgetStatus {
    ready: bool,
    observed: i32,
}

async fn client() -> Client {
    rig().kube_client().await
}

/// Applies the Widget CRD (idempotent) and waits until the API server serves it.
async fn widget_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = Widget::crd();
    let name = crd.name_any();
    crds.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("apply CRD");
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(crds, &name, conditions::is_crd_established()),
    )
    .await
    .expect("CRD not established within 30 s")
    .expect("watching the CRD");
}

/// A fresh namespace, deleted by [`drop_namespace`].
async fn namespace(client: &Client) -> String {
    rig().create_namespace(client, "smoke").await
}

async fn drop_namespace(client: &Client, name: &str) {
    rig().delete_namespace(client, name).await;
}

async fn wait_gone<K>(api: &Api<K>, name: &str, what: &str)
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    wait::until(what, Duration::from_secs(60), || async {
        api.get_opt(name)
            .await
            .expect("get")
            .is_none()
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crd_watch_and_status_server_side_apply() {
    let client = client().await;
    widget_crd(&client).await;
    let ns = namespace(&client).await;
    let widgets: Api<Widget> = Api::namespaced(client.clone(), &ns);

    // Watch first, then create: the object must arrive through the watch.
    let mut seen = watcher(widgets.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    let w = Widget::new("w1", WidgetSpec { size: 3 });
    widgets
        .create(&PostParams::default(), &w)
        .await
        .expect("create widget");
    let arrived = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(obj) = seen.try_next().await.expect("watch stream") {
            if obj.name_any() == "w1" {
                return obj;
            }
        }
        panic!("watch ended");
    })
    .await
    .expect("the created object did not arrive through the watch within 30 s");
    assert_eq!(arrived.spec.size, 3);

    // Server-side apply on the status subresource: status changes, spec does not, and the field
    // manager owns the status fields.
    let status = json!({
        "apiVersion": Widget::api_version(&()), "kind": Widget::kind(&()),
        "status": {"ready": true, "observed": 3}
    });
    widgets
        .patch_status(
            "w1",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&status),
        )
        .await
        .expect("status SSA");
    let got = widgets.get("w1").await.unwrap();
    assert_eq!(
        got.status,
        Some(WidgetStatus {
            ready: true,
            observed: 3
        })
    );
    assert_eq!(got.spec.size, 3);
    let managers: Vec<_> = got
        .managed_fields()
        .iter()
        .filter_map(|m| Some((m.manager.clone()?, m.subresource.clone())))
        .collect();
    assert!(
        managers.contains(&(MANAGER.to_owned(), Some("status".to_owned()))),
        "{managers:?}"
    );

    // The main resource ignores status in an ordinary update (the subresource is enabled).
    let mut edited = got.clone();
    edited.status = Some(WidgetStatus {
        ready: false,
        observed: 99,
    });
    edited.spec.size = 4;
    widgets
        .replace("w1", &PostParams::default(), &edited)
        .await
        .unwrap();
    let got = widgets.get("w1").await.unwrap();
    assert_eq!(
        (got.spec.size, got.status.map(|s| s.observed)),
        (4, Some(3))
    );
    drop_namespace(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_children_are_garbage_collected() {
    let client = client().await;
    widget_crd(&client).await;
    let ns = namespace(&client).await;
    let widgets: Api<Widget> = Api::namespaced(client.clone(), &ns);
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);

    let owner = widgets
        .create(
            &PostParams::default(),
            &Widget::new("owner", WidgetSpec { size: 1 }),
        )
        .await
        .unwrap();
    let owner_ref: OwnerReference = owner.controller_owner_ref(&()).expect("owner reference");
    let child: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "child", "ownerReferences": [owner_ref]},
        "data": {"k": "v"}
    }))
    .unwrap();
    maps.create(&PostParams::default(), &child)
        .await
        .expect("create child");
    let unowned: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "bystander"}})).unwrap();
    maps.create(&PostParams::default(), &unowned).await.unwrap();

    widgets
        .delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    wait_gone(
        &maps,
        "child",
        "the garbage collector to delete the owned ConfigMap",
    )
    .await;
    assert!(
        maps.get_opt("bystander").await.unwrap().is_some(),
        "GC deleted an object it did not own"
    );
    drop_namespace(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_created_and_renewed_with_optimistic_concurrency() {
    let client = client().await;
    let ns = namespace(&client).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let now = || MicroTime(k8s_openapi::jiff::Timestamp::now());
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "worker-lease", "labels": {"messagepipeline.io/role": "indexer"}},
        "spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 30}
    }))
    .unwrap();
    let mut created = leases
        .create(&PostParams::default(), &lease)
        .await
        .expect("create lease");
    created.spec.as_mut().unwrap().renew_time = Some(now());
    let first_rv = created.resource_version();
    let renewed = leases
        .replace("worker-lease", &PostParams::default(), &created)
        .await
        .expect("renew");
    assert_ne!(renewed.resource_version(), first_rv);
    assert!(renewed.spec.as_ref().unwrap().renew_time.is_some());

    // A second holder renewing from a stale read loses: 409 Conflict.
    let err = leases
        .replace("worker-lease", &PostParams::default(), &created)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409),
        "expected a conflict, got {err}"
    );
    drop_namespace(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_namespace_and_its_contents_disappear() {
    let client = client().await;
    let ns = namespace(&client).await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "inside"}})).unwrap();
    maps.create(&PostParams::default(), &cm).await.unwrap();

    let nss: Api<Namespace> = Api::all(client.clone());
    nss.delete(&ns, &DeleteParams::default())
        .await
        .expect("delete namespace");
    wait_gone(
        &nss,
        &ns,
        "the namespace controller to finish deleting the namespace",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_gets_the_custom_resource() {
    let client = client().await;
    widget_crd(&client).await;
    let ns = namespace(&client).await;
    let widgets: Api<Widget> = Api::namespaced(client.clone(), &ns);
    widgets
        .create(
            &PostParams::default(),
            &Widget::new("seen-by-kubectl", WidgetSpec { size: 7 }),
        )
        .await
        .unwrap();

    for resource in ["widgets", "wdg", "widget.smoke.messagepipeline.io"] {
        let out = rig()
            .kubectl()
            .args(["get", resource, "-n", &ns, "-o", "json"])
            .output()
            .expect("run kubectl");
        assert!(
            out.status.success(),
            "kubectl get {resource}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let items = list["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "{resource}");
        assert_eq!(items[0]["metadata"]["name"], "seen-by-kubectl");
        assert_eq!(items[0]["spec"]["size"], 7);
    }
    drop_namespace(&client, &ns).await;
}
