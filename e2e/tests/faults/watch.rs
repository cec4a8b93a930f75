//! The status, sampled every second the whole suite long, against itself and against the world.
//!
//! At every sample, for each watched pipeline:
//! - every condition carries the `observedGeneration` of the status, except that while `Ready`
//!   refuses the spec (`InvalidSpec`, `ResourceConflict`, `ClaimUndecided`) the others may carry
//!   an older one, the generation they describe (strict);
//! - `Ready=True` only with `TopicsReady`, `IndexTemplateReady`, `ApiServerAvailable` and
//!   `IndexerAvailable` True and `IndexerHealthy` not False (strict);
//! - `Ready=True` for the current generation only while both worker Deployments run it: their
//!   controller has taken up their spec, every replica is updated and available, no older pod is
//!   left, and their image is the pipeline's (a violation counts after it lasted [`KUBE_GRACE`]:
//!   the operator learns of a Deployment's change from its watch);
//! - `Ready=True` only while the topic, the DLQ and the alias exist (counts after
//!   [`EXTERNAL_GRACE`]: the operator looks at Kafka and the engine once per requeue, 30 s).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use e2e::cluster::Pipeline;
use e2e::kafka;
use e2e::rig::rig;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use messagepipeline_crd::MessagePipeline;

use crate::world::World;

const EVERY: Duration = Duration::from_secs(1);
/// `Ready`'s reasons for a spec the operator did not act on.
const REFUSALS: [&str; 3] = ["InvalidSpec", "ResourceConflict", "ClaimUndecided"];
/// How long the status may trail a Deployment's change.
const KUBE_GRACE: Duration = Duration::from_secs(15);
/// How long it may trail a topic or alias gone behind the operator's back.
const EXTERNAL_GRACE: Duration = Duration::from_secs(45);

/// What the sampling found.
#[derive(Debug, Default)]
pub struct Report {
    pub samples: u64,
    pub pipelines: usize,
    pub checks: u64,
    pub violations: Vec<String>,
}

pub struct Watch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Report>,
}

struct Watched {
    pipeline: Pipeline,
    mps: Api<MessagePipeline>,
    deployments: Api<Deployment>,
}

impl Watch {
    pub fn start(world: &World) -> Self {
        let client = world.install.client.clone();
        let watched: Vec<Watched> = [&world.chat, &world.bystander]
            .into_iter()
            .map(|p| Watched {
                pipeline: p.clone(),
                mps: Api::namespaced(client.clone(), &p.namespace),
                deployments: Api::namespaced(client.clone(), &p.namespace),
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(sample(watched, Arc::clone(&stop)));
        Self { stop, task }
    }

    pub async fn stop(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// Since when each (pipeline, rule) has been violated, for the rules with a grace.
type Since = HashMap<(String, &'static str), (Instant, String)>;

async fn sample(watched: Vec<Watched>, stop: Arc<AtomicBool>) -> Report {
    let mut report = Report {
        pipelines: watched.len(),
        ..Report::default()
    };
    let mut since = Since::new();
    while !stop.load(Ordering::Relaxed) {
        report.samples += 1;
        for w in &watched {
            check(w, &mut report, &mut since).await;
        }
        tokio::time::sleep(EVERY).await;
    }
    report
}

async fn check(w: &Watched, report: &mut Report, since: &mut Since) {
    let name = format!("{}/{}", w.pipeline.namespace, w.pipeline.name);
    // The world first, the status last: a status read after the world can only be newer.
    let deployments = [
        w.deployments
            .get_opt(&format!("{}-api", w.pipeline.name))
            .await,
        w.deployments
            .get_opt(&format!("{}-indexer", w.pipeline.name))
            .await,
    ];
    let external = external_in_place(&w.pipeline).await;
    let Ok(Some(mp)) = w.mps.get_opt(&w.pipeline.name).await else {
        return;
    };
    let Some(status) = mp.status.as_ref() else {
        return;
    };
    report.checks += 1;
    let get = |t: &str| status.conditions.iter().find(|c| c.type_ == t);
    let is = |t: &str, s: &str| get(t).is_some_and(|c| c.status == s);
    let mut strict = Vec::new();
    // A refused spec is not acted on: `Ready` says so at the new generation, and the other
    // conditions still describe the generation last acted on (and say which).
    let refused =
        get("Ready").is_some_and(|c| c.status == "False" && REFUSALS.contains(&c.reason.as_str()));
    for c in &status.conditions {
        let stale_but_said =
            refused && c.type_ != "Ready" && c.observed_generation < status.observed_generation;
        if c.observed_generation != status.observed_generation && !stale_but_said {
            strict.push(format!(
                "{} has observedGeneration {:?}, the status {:?}",
                c.type_, c.observed_generation, status.observed_generation
            ));
        }
    }
    let ready = is("Ready", "True");
    if ready {
        for part in [
            "TopicsReady",
            "IndexTemplateReady",
            "ApiServerAvailable",
            "IndexerAvailable",
        ] {
            if !is(part, "True") {
                strict.push(format!("Ready=True with {part} {:?}", get(part)));
            }
        }
        if is("IndexerHealthy", "False") {
            strict.push("Ready=True with IndexerHealthy=False".into());
        }
    }
    for s in strict {
        report.violations.push(format!("{name}: {s}"));
    }
    let current = status.observed_generation == mp.metadata.generation;
    let not_running: Vec<String> = deployments
        .iter()
        .filter_map(|d| match d {
            Ok(Some(d)) => runs(d, &mp.spec.image),
            Ok(None) => Some("a worker Deployment is missing".into()),
            Err(_) => None,
        })
        .collect();
    let lies = [
        (
            "rollout",
            KUBE_GRACE,
            (ready && current && !not_running.is_empty()).then(|| not_running.join("; ")),
        ),
        (
            "external",
            EXTERNAL_GRACE,
            (ready && external.is_some()).then(|| external.clone().unwrap_or_default()),
        ),
    ];
    for (rule, grace, lie) in lies {
        let key = (name.clone(), rule);
        match lie {
            None => {
                since.remove(&key);
            }
            Some(what) => {
                let (first, _) = since
                    .entry(key.clone())
                    .or_insert_with(|| (Instant::now(), what.clone()));
                if first.elapsed() >= grace {
                    report.violations.push(format!(
                        "{name}: Ready=True for {:?} while {what}",
                        first.elapsed()
                    ));
                    since.remove(&key);
                }
            }
        }
    }
}

/// Why a Deployment does not run its current spec with the pipeline's image, if it does not.
fn runs(d: &Deployment, image: &str) -> Option<String> {
    let name = d.metadata.name.clone().unwrap_or_default();
    let spec = d.spec.as_ref()?;
    let desired = spec.replicas.unwrap_or(1);
    let status = d.status.clone().unwrap_or_default();
    let has = spec
        .template
        .spec
        .as_ref()
        .map(|p| p.containers[0].image.clone().unwrap_or_default());
    if has.as_deref() != Some(image) {
        return Some(format!("{name} runs {has:?}, the spec asks for {image}"));
    }
    let taken_up = status.observed_generation >= d.metadata.generation;
    let updated = status.updated_replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let all = status.replicas.unwrap_or(0);
    (!(taken_up && updated >= desired && available >= desired && all <= updated)).then(|| {
        format!(
            "{name}: taken up {taken_up}, {updated} updated, {available} available, {all} pods, {desired} desired"
        )
    })
}

/// What of the pipeline's topics and alias is missing (`None`: everything is there).
async fn external_in_place(p: &Pipeline) -> Option<String> {
    let (topic, dlq) = (p.topic.clone(), format!("{}.dlq", p.topic));
    let missing_topics = tokio::task::spawn_blocking(move || {
        [topic, dlq]
            .into_iter()
            .filter(|t| !kafka::topic_exists(t))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    let alias = reqwest::Client::new()
        .get(format!("{}/_alias/{}", rig().search_url(), p.alias))
        .send()
        .await
        .map(|r| r.status().is_success())
        .unwrap_or(true);
    let mut missing = missing_topics;
    if !alias {
        missing.push(format!("alias {}", p.alias));
    }
    (!missing.is_empty()).then(|| format!("{} missing", missing.join(", ")))
}
