//! The fault suite: the ordinary faults a user's system sees, by class rather than by component,
//! against the product installed on the rig's node (the operator from its chart watching every
//! namespace, its workers as pods, clients through the api-server's Service).
//!
//! Classes, in order: clients hanging up at random points of every write path, under load
//! (`disconnects`); pipelines claiming what another holds, on addresses spelled otherwise, and
//! their deletion under each policy (`claims`); bad images and bad specs during an upgrade
//! (`upgrades`); workers, the operator and the rebuild Job killed at random moments (`kills`);
//! namespaces deleted with a pipeline whose credentials are Secrets in them, with the operator
//! up and with the operator away (`namespaces`). The relay's books under random interleavings
//! are the api-server's model test (`api-server/src/outbox/model.rs`).
//!
//! After each class: every acknowledged write is in MongoDB, on Kafka and in the index at its
//! version; the bystander pipeline in its own namespace has the topic, DLQ, template and index
//! it had, and still says Ready. The whole time, each pipeline's status is sampled every second
//! and checked against itself and against what its Deployments, topics and alias are (module
//! `watch`).
//!
//! `make test` runs the short mode; `make e2e-full` (feature `full`) runs each class longer;
//! `FAULT_CLASSES=upgrades,kills` runs only those.

mod claims;
mod disconnects;
mod kills;
mod namespaces;
mod upgrades;
mod watch;
mod world;

use std::time::Instant;

use world::World;

/// What one class did, for the table the suite prints.
#[derive(Debug)]
pub struct Figures {
    pub class: &'static str,
    pub seconds: f64,
    /// Writes acknowledged while the class ran.
    pub writes: u64,
    /// What was done to the system, in words.
    pub faults: String,
    /// Documents compared in MongoDB, on Kafka and in the index afterwards.
    pub documents: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_fault_class_loses_nothing_touches_no_other_pipeline_and_the_status_never_lies() {
    let started = Instant::now();
    let world = World::new().await;
    let setup = started.elapsed();
    let watch = watch::Watch::start(&world);
    // FAULT_CLASSES=upgrades,kills runs only those (in the suite's order).
    let only = std::env::var("FAULT_CLASSES").ok();
    let wanted = |class: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|c| c.trim() == class))
    };
    let mut figures = Vec::new();
    if wanted("disconnects") {
        figures.push(disconnects::run(&world).await);
    }
    if wanted("claims") {
        figures.push(claims::run(&world).await);
    }
    if wanted("upgrades") {
        figures.push(upgrades::run(&world).await);
    }
    if wanted("kills") {
        figures.push(kills::run(&world).await);
    }
    if wanted("namespaces") {
        figures.push(namespaces::run(&world).await);
    }
    let report = watch.stop().await;
    eprintln!(
        "fault suite ({} mode): set up in {:.0} s",
        if world.full { "full" } else { "short" },
        setup.as_secs_f64()
    );
    for f in &figures {
        eprintln!(
            "  {:<12} {:>5.0} s  {:>6} writes  {:>6} documents checked  {}",
            f.class, f.seconds, f.writes, f.documents, f.faults
        );
    }
    eprintln!(
        "  status: {} samples of {} pipelines, {} checks, {} violations",
        report.samples,
        report.pipelines,
        report.checks,
        report.violations.len()
    );
    assert!(
        report.violations.is_empty(),
        "the status said what was not so:\n{}",
        report.violations.join("\n")
    );
    world.remove().await;
}
