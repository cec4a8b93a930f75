//! Apply: the children `build` made, server-side applied with the operator's field manager, in
//! the order the workers need. Everything but the worker Deployments goes at once; the
//! Deployments go once the topics and the index layout exist (a worker started before them
//! crashes: the indexer finds no alias, the relay no topic), or at once when they exist already
//! (a spec change, an image fix, reaches running workers whatever Kafka or the engine is doing).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use messagepipeline_crd::FIELD_MANAGER;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::build::{Children, PerRole};

async fn ssa<K>(client: &Client, namespace: &str, obj: &K) -> Result<K, kube::Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + Serialize
        + DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(&obj.name_any(), &params, &Patch::Apply(obj))
        .await
}

/// Every child but the worker Deployments: service account, RBAC, Services, disruption
/// budgets, the audit's CronJob (or its removal).
pub async fn support(client: &Client, namespace: &str, c: &Children) -> Result<(), kube::Error> {
    let audit = async {
        match &c.audit {
            Some(cron) => ssa::<CronJob>(client, namespace, cron).await.map(drop),
            // No audit in the spec: one scheduled before goes (a run in flight finishes).
            None => {
                let api: Api<CronJob> = Api::namespaced(client.clone(), namespace);
                match api.delete(&c.audit_name, &DeleteParams::background()).await {
                    Ok(_) => {
                        tracing::info!(cronjob = %c.audit_name, "no audit in the spec: deleted");
                        Ok(())
                    }
                    Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                    Err(e) => Err(e),
                }
            }
        }
    };
    // The RoleBinding after its Role: binding a Role the operator may not `bind` is checked
    // against the Role's rules, and the API server answers 404 while the Role is not there.
    // Applied side by side, the binding's 404 ended the join and dropped the Role's apply with
    // it, reconcile after reconcile, so the workers never got their permissions.
    let rbac = async {
        ssa::<Role>(client, namespace, &c.role).await?;
        ssa::<RoleBinding>(client, namespace, &c.role_binding).await
    };
    // The rest at once: none needs another to exist first, and one round trip after another
    // was most of a reconcile's time.
    futures::try_join!(
        ssa::<ServiceAccount>(client, namespace, &c.service_account),
        rbac,
        ssa::<Service>(client, namespace, &c.services.api),
        ssa::<Service>(client, namespace, &c.services.indexer),
        ssa::<PodDisruptionBudget>(client, namespace, &c.pdbs.api),
        ssa::<PodDisruptionBudget>(client, namespace, &c.pdbs.indexer),
        audit,
    )?;
    Ok(())
}

/// The worker Deployments as the API server has them after the apply; with `prerequisites`
/// false (the topics or the index not in place), only those that exist already are applied, and
/// `None` stands for one held back.
pub async fn deployments(
    client: &Client,
    namespace: &str,
    wanted: &PerRole<Deployment>,
    prerequisites: bool,
) -> Result<PerRole<Option<Deployment>>, kube::Error> {
    let one = |d: &Deployment| {
        let d = d.clone();
        async move {
            if !prerequisites {
                let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
                if api.get_opt(&d.name_any()).await?.is_none() {
                    return Ok(None);
                }
            }
            ssa(client, namespace, &d).await.map(Some)
        }
    };
    let (api, indexer) = futures::try_join!(one(&wanted.api), one(&wanted.indexer))?;
    Ok(PerRole { api, indexer })
}
