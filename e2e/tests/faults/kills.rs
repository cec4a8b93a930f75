//! Kills at random moments, under writes: an api-server, an indexer and the operator
//! force-deleted (grace 0, as a node failure ends them), then the rebuild Job's pod killed at a
//! phase of its rebuild (the moment it says `AwaitingSwap`; in the long mode also while it scans
//! and while it catches up): the Job's next pod finishes it, and the index swapped in holds
//! everything.

use std::time::{Duration, Instant};

use e2e::cluster::{Traffic, pod_ready, ready_with};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams};
use messagepipeline_crd::MessagePipeline;
use pipeline_contract::worker::lease;
use serde_json::{Value, json};

use crate::Figures;
use crate::world::{READY_WITHIN, World, until};

async fn force_delete(world: &World, namespace: &str, pod: &str) {
    let _ = world
        .install
        .api_in::<Pod>(namespace)
        .delete(pod, &DeleteParams::default().grace_period(0))
        .await;
}

fn name(p: &Pod) -> String {
    p.metadata.name.clone().unwrap_or_default()
}

/// One round: an api-server, an indexer and the operator, each at a random moment.
async fn round(world: &World) -> Vec<String> {
    let mut killed = Vec::new();
    for pods in [
        world.chat.pods(&world.install, "api").await,
        world.chat.pods(&world.install, "indexer").await,
        world.install.operator_pods().await,
    ] {
        let ready: Vec<&Pod> = pods.iter().filter(|p| pod_ready(p)).collect();
        let victim = name(ready[fastrand::usize(0..ready.len())]);
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..2_000))).await;
        force_delete(world, &world.install.namespace, &victim).await;
        killed.push(victim);
    }
    until(world, &world.chat, "Ready again", READY_WITHIN, |mp| {
        ready_with(mp, 2, 2)
    })
    .await;
    crate::world::eventually("replacements ready", READY_WITHIN, || async {
        let mut pods = world.chat.worker_pods(&world.install).await;
        pods.extend(world.install.operator_pods().await);
        (pods.len() == 5
            && pods
                .iter()
                .all(|p| pod_ready(p) && !killed.contains(&name(p))))
        .then_some(())
    })
    .await;
    killed
}

/// Raises the index generation to `generation` and kills the rebuild Job's pod the moment its
/// Lease says `phase`; waits until the rebuild completed (by the Job's next pod).
async fn rebuild_killed_at(world: &World, generation: u32, phase: &str) -> String {
    let api = world.chat.mps(&world.install);
    let stored: MessagePipeline = api.get(&world.chat.name).await.unwrap();
    let mut spec: Value = serde_json::to_value(&stored.spec).unwrap();
    spec["elasticsearch"]["indexGeneration"] = json!(generation);
    let namespace = world.chat.namespace.clone();
    world
        .install
        .patch_pipeline_in(&namespace, &world.chat.name, spec)
        .await;
    let leases = world.install.api_in::<Lease>(&namespace);
    let selector = format!(
        "{}={},{}=rebuild",
        lease::LABEL_PIPELINE,
        world.chat.name,
        lease::LABEL_ROLE
    );
    let holder = crate::world::eventually(
        &format!("the rebuild to say {phase}"),
        Duration::from_secs(180),
        || async {
            let found = leases
                .list(&ListParams::default().labels(&selector))
                .await
                .ok()?;
            found.items.iter().find_map(|l| {
                let a = l.metadata.annotations.as_ref()?;
                let this = a.get(lease::ANNOTATION_REBUILD_GENERATION)? == &generation.to_string()
                    && a.get(lease::ANNOTATION_REBUILD_PHASE)? == phase;
                this.then(|| l.spec.as_ref()?.holder_identity.clone())?
            })
        },
    )
    .await;
    force_delete(world, &namespace, &holder).await;
    until(
        world,
        &world.chat,
        &format!("generation {generation} rebuilt after its pod was killed at {phase}"),
        Duration::from_secs(300),
        |mp| {
            let status = mp.status.as_ref();
            status
                .and_then(|s| s.index.as_ref())
                .and_then(|i| i.generation)
                == Some(generation)
                && status
                    .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Rebuilding"))
                    .is_some_and(|c| c.reason == "RebuildComplete")
        },
    )
    .await;
    holder
}

pub async fn run(world: &World) -> Figures {
    let started = Instant::now();
    let base = world.base().await;
    let traffic = Traffic::start(&base, 4, Duration::from_millis(20));
    traffic.progresses(50, Duration::from_secs(60)).await;
    let rounds = if world.full { 4 } else { 1 };
    let mut killed = Vec::new();
    for _ in 0..rounds {
        killed.extend(round(world).await);
        traffic.progresses(50, Duration::from_secs(60)).await;
    }
    let phases: &[&str] = if world.full {
        &["Scanning", "CatchingUp", "AwaitingSwap"]
    } else {
        &["AwaitingSwap"]
    };
    let mut rebuilds = Vec::new();
    for (i, phase) in phases.iter().enumerate() {
        let generation = u32::try_from(i).unwrap() + 2;
        let pod = rebuild_killed_at(world, generation, phase).await;
        rebuilds.push(format!("generation {generation} at {phase} ({pod})"));
        traffic.progresses(50, Duration::from_secs(60)).await;
    }
    let (acked, writes, _) = traffic.stop().await;
    let documents = world.check("kills", &acked).await;
    Figures {
        class: "kills",
        seconds: started.elapsed().as_secs_f64(),
        writes,
        faults: format!(
            "{} pods force-deleted in {rounds} round(s) (api-server, indexer, operator); rebuild Job pods killed: {}",
            killed.len(),
            rebuilds.join(", ")
        ),
        documents,
    }
}
