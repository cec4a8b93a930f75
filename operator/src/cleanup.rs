//! Cleanup: the finalizer's work. With `deletionPolicy: Retain`, nothing outside Kubernetes is
//! touched. With `Delete`, what this pipeline made and no other pipeline claims: the topics its
//! status records as created by it (module `external`), the index template and the index
//! generations whose `_meta` names it. Whatever is left is said, with why, in the Event and the
//! log. Children go with the resource through their owner references.
//!
//! It must never hold a namespace forever. The clusters are reached with the pipeline's Secrets,
//! or, when those are gone (deleted with the namespace), the way the operator last reached
//! them; when neither is there and the namespace is being deleted, what could not be reached is
//! left, and said.

use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use messagepipeline_crd::{DeletionPolicy, MessagePipeline};
use pipeline_contract::install;
use pipeline_contract::search::IndexLayout;

use crate::controller::{
    Context, Error, Search, SecretProblem, kafka_credentials, search_endpoint,
};
use crate::kafka;
use crate::validate::{self, Clusters};

/// What the cleanup did and did not do.
#[derive(Debug, Default)]
struct Outcome {
    deleted: Vec<String>,
    /// Each with why.
    left: Vec<String>,
}

pub async fn cleanup(mp: &MessagePipeline, ctx: &Context) -> Result<Action, Error> {
    ctx.metrics
        .forget(&mp.namespace().unwrap_or_default(), &mp.name_any());
    if mp.spec.deletion_policy == DeletionPolicy::Retain {
        let note = "deletionPolicy Retain: topics, index and template are left in place";
        ctx.event(
            mp,
            EventType::Normal,
            "ExternalStateRetained",
            note.into(),
            "Delete",
        )
        .await;
        ctx.forget_reached(mp);
        return Ok(Action::await_change());
    }
    let all = ctx.pipelines().await;
    let mut outcome = Outcome::default();
    topics(ctx, mp, &all, &mut outcome).await?;
    index(ctx, mp, &all, &mut outcome).await?;
    let note = format!(
        "deletionPolicy Delete: deleted [{}]; left [{}]",
        outcome.deleted.join(", "),
        outcome.left.join("; ")
    );
    tracing::info!(pipeline = %mp.name_any(), deleted = ?outcome.deleted, left = ?outcome.left, "external state cleaned up");
    ctx.event(
        mp,
        EventType::Normal,
        "ExternalStateDeleted",
        note,
        "Delete",
    )
    .await;
    ctx.forget_reached(mp);
    Ok(Action::await_change())
}

/// The topics this pipeline created that no other pipeline claims.
async fn topics(
    ctx: &Context,
    mp: &MessagePipeline,
    all: &[MessagePipeline],
    outcome: &mut Outcome,
) -> Result<(), Error> {
    let mine = Clusters::of(mp);
    let external = mp.status.clone().unwrap_or_default().external;
    let mut names = Vec::new();
    for name in kafka::wanted(&mp.spec).map(|t| t.name) {
        if !external.topics.iter().any(|t| t.name == name && t.created) {
            outcome
                .left
                .push(format!("topic {name} (not created by this pipeline)"));
        }
    }
    for record in external.topics.iter().filter(|t| t.created) {
        let claim = validate::topic_claim(&record.name);
        match validate::claimed_by_another(mp, &mine, &claim, all) {
            Some(other) => outcome.left.push(format!(
                "topic {} (claimed by MessagePipeline {other})",
                record.name
            )),
            None => names.push(record.name.clone()),
        }
    }
    if names.is_empty() {
        return Ok(());
    }
    let fresh = kafka_credentials(ctx, mp)
        .await
        .map(|creds| kafka::client_config(&mp.spec.kafka, &creds));
    match reach(ctx, mp, fresh, ctx.reached(mp).kafka).await? {
        Some(config) => {
            kafka::delete_topics(&config, &names).await?;
            outcome
                .deleted
                .extend(names.iter().map(|n| format!("topic {n}")));
        }
        None => outcome.left.push(format!(
            "topics {} (their credentials went with the namespace)",
            names.join(", ")
        )),
    }
    Ok(())
}

/// The template and the index generations marked as this pipeline's, unless another pipeline
/// claims the alias.
async fn index(
    ctx: &Context,
    mp: &MessagePipeline,
    all: &[MessagePipeline],
    outcome: &mut Outcome,
) -> Result<(), Error> {
    let alias = &mp.spec.elasticsearch.alias;
    let claim = validate::alias_claim(alias);
    if let Some(other) = validate::claimed_by_another(mp, &Clusters::of(mp), &claim, all) {
        outcome.left.push(format!(
            "the index template and indices of alias {alias} (claimed by MessagePipeline {other})"
        ));
        return Ok(());
    }
    let fresh = search_endpoint(ctx, mp).await;
    let Some((http, endpoint)): Option<Search> =
        reach(ctx, mp, fresh, ctx.reached(mp).search).await?
    else {
        outcome.left.push(format!(
            "the index template and indices of alias {alias} (their credentials went with the namespace)"
        ));
        return Ok(());
    };
    let uid = mp.uid();
    let layout = IndexLayout::new(alias.clone())?;
    match install::template_owner(&http, &endpoint, &layout).await? {
        None => {}
        Some(owner) if owner.is_some() && owner == uid => {
            install::delete_template(&http, &endpoint, &layout).await?;
            outcome
                .deleted
                .push(format!("template {}", layout.template_name()));
        }
        Some(_) => outcome.left.push(format!(
            "template {} (its _meta names another owner or none)",
            layout.template_name()
        )),
    }
    // Then the indices: with the template gone, nothing makes them again.
    for (index, owner) in install::generation_owners(&http, &endpoint, &layout).await? {
        if owner.is_some() && owner == uid {
            install::delete_index(&http, &endpoint, &index).await?;
            outcome.deleted.push(format!("index {index}"));
        } else {
            outcome.left.push(format!(
                "index {index} (its _meta names another owner or none)"
            ));
        }
    }
    Ok(())
}

/// The connection to use: made from the Secrets now, or, when a Secret is gone, the one the
/// operator last used; `None` when neither is there and the namespace is being deleted (the
/// Secret will not come back). Otherwise the error stands and the cleanup is retried.
async fn reach<T>(
    ctx: &Context,
    mp: &MessagePipeline,
    fresh: Result<T, Error>,
    remembered: Option<T>,
) -> Result<Option<T>, Error> {
    match fresh {
        Ok(connection) => Ok(Some(connection)),
        Err(Error::Secret {
            problem: SecretProblem::NotFound,
            ..
        }) if remembered.is_some() => Ok(remembered),
        Err(
            error @ Error::Secret {
                problem: SecretProblem::NotFound,
                ..
            },
        ) => {
            if namespace_terminating(ctx, mp).await {
                tracing::warn!(%error, pipeline = %mp.name_any(), "the namespace is being deleted and the Secret with it: leaving what it gave access to");
                Ok(None)
            } else {
                Err(error)
            }
        }
        Err(error) => Err(error),
    }
}

async fn namespace_terminating(ctx: &Context, mp: &MessagePipeline) -> bool {
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    match api.get(&mp.namespace().unwrap_or_default()).await {
        Ok(ns) => ns.metadata.deletion_timestamp.is_some(),
        Err(error) => {
            tracing::warn!(%error, "reading the pipeline's namespace");
            false
        }
    }
}
