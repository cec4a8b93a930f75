//! Upgrades, bad images and bad specs, under writes. The operator upgraded with helm. A new
//! image for the workers (another name of the same one) rolls out: the pipeline says `RollingOut` until every replica runs it. An image no
//! node has: `RollingOut`, then `RolloutStuck` past the progress deadline, while the old pods
//! keep serving; set back, the rollout finishes. A spec the operator refuses (`InvalidSpec`):
//! the running workers are left as they are and keep serving; set back, Ready again.

use std::time::{Duration, Instant};

use e2e::cluster::{Traffic, condition, ready_with, reason};
use messagepipeline_crd::MessagePipeline;
use serde_json::{Value, json};

use crate::Figures;
use crate::world::{READY_WITHIN, World, until};

async fn change(world: &World, change: impl FnOnce(&mut Value)) -> i64 {
    let api = world.chat.mps(&world.install);
    let stored: MessagePipeline = api.get(&world.chat.name).await.unwrap();
    let mut spec = serde_json::to_value(&stored.spec).unwrap();
    change(&mut spec);
    world
        .install
        .patch_pipeline_in(&world.chat.namespace, &world.chat.name, spec)
        .await;
    api.get(&world.chat.name)
        .await
        .unwrap()
        .metadata
        .generation
        .unwrap()
}

fn observed(mp: &MessagePipeline, generation: i64) -> bool {
    mp.status.as_ref().and_then(|s| s.observed_generation) == Some(generation)
}

/// The reasons `Ready` gave for `generation` until `done` held (in order, without repeats).
async fn reasons_until(
    world: &World,
    generation: i64,
    within: Duration,
    done: impl Fn(&MessagePipeline) -> bool,
) -> Vec<String> {
    let api = world.chat.mps(&world.install);
    let deadline = Instant::now() + within;
    let mut seen: Vec<String> = Vec::new();
    loop {
        let mp = api.get(&world.chat.name).await.unwrap();
        if observed(&mp, generation)
            && let Some(r) = reason(&mp, "Ready")
            && seen.last().map(String::as_str) != Some(r)
        {
            seen.push(r.to_owned());
        }
        if observed(&mp, generation) && done(&mp) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "generation {generation}: not done after {within:?}; Ready said {seen:?}; {:?}",
            mp.status.map(|s| s.conditions)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn run(world: &World) -> Figures {
    let started = Instant::now();
    let base = world.base().await;
    let traffic = Traffic::start(&base, 4, Duration::from_millis(20));
    traffic.progresses(50, Duration::from_secs(60)).await;
    let (image, next) = (
        world.install.image.clone(),
        world.install.image_next.clone(),
    );

    // The operator upgraded with helm (a changed value rolls its pod) while the workers serve.
    let operators: Vec<String> = world
        .install
        .operator_pods()
        .await
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    tokio::task::block_in_place(|| world.install.helm_upgrade(&image, &["logLevel=debug"]));
    crate::world::eventually("the operator's pod replaced", READY_WITHIN, || async {
        let pods = world.install.operator_pods().await;
        (pods
            .iter()
            .all(|p| !operators.contains(p.metadata.name.as_ref().unwrap()))
            && pods.iter().any(e2e::cluster::pod_ready))
        .then_some(())
    })
    .await;
    traffic.progresses(50, Duration::from_secs(60)).await;

    // A good new image: not Ready until every replica runs it.
    let g = change(world, |s| s["image"] = json!(next)).await;
    let rolled = reasons_until(world, g, READY_WITHIN, |mp| ready_with(mp, 2, 2)).await;
    assert!(
        rolled.first().map(String::as_str) == Some("RollingOut"),
        "a new image: Ready said {rolled:?}"
    );
    traffic.progresses(50, Duration::from_secs(60)).await;

    // An image no node has: stuck, said so, and the old pods serve meanwhile.
    let missing = format!("{}:no-such-tag", image.rsplit_once(':').unwrap().0);
    let g = change(world, |s| s["image"] = json!(missing)).await;
    let stuck = reasons_until(world, g, Duration::from_secs(180), |mp| {
        reason(mp, "Ready") == Some("RolloutStuck")
    })
    .await;
    assert_eq!(
        stuck.first().map(String::as_str),
        Some("RollingOut"),
        "{stuck:?}"
    );
    traffic.progresses(50, Duration::from_secs(60)).await;
    let g = change(world, |s| s["image"] = json!(next)).await;
    reasons_until(world, g, READY_WITHIN, |mp| ready_with(mp, 2, 2)).await;

    // A spec the operator refuses: said, and the running workers are left alone.
    // The pods serving (a pod of the stuck rollout may still be terminating).
    let serving = || async {
        let mut names: Vec<String> = world
            .chat
            .worker_pods(&world.install)
            .await
            .iter()
            .filter(|p| e2e::cluster::pod_ready(p))
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        names.sort();
        names
    };
    let before = serving().await;
    let g = change(world, |s| s["indexer"]["tombstoneHorizonDays"] = json!(1)).await;
    let mp = until(
        world,
        &world.chat,
        "InvalidSpec",
        Duration::from_secs(60),
        |mp| observed(mp, g) && reason(mp, "Ready") == Some("InvalidSpec"),
    )
    .await;
    assert_eq!(condition(&mp, "Ready"), Some("False"));
    traffic.progresses(50, Duration::from_secs(60)).await;
    assert_eq!(serving().await, before, "a refused spec changes no worker");
    let g = change(world, |s| s["indexer"]["tombstoneHorizonDays"] = json!(21)).await;
    reasons_until(world, g, READY_WITHIN, |mp| ready_with(mp, 2, 2)).await;

    let (acked, writes, _) = traffic.stop().await;
    let documents = world.check("upgrades", &acked).await;
    Figures {
        class: "upgrades",
        seconds: started.elapsed().as_secs_f64(),
        writes,
        faults: format!(
            "the operator upgraded with helm; a new image (Ready said {rolled:?}), an image no node has ({stuck:?}) and back, a refused spec (InvalidSpec, workers untouched) and back"
        ),
        documents,
    }
}
