//! The scheduled audit on the rig's node: `spec.audit` makes the operator's CronJob run
//! `indexer audit` (a pod of the worker image) every minute. The index is damaged behind the
//! pipeline's back (a document deleted, an orphan written); the next audit reports exactly that
//! on the status (`status.audit`, `IndexInSync` False with the counts, `Degraded`, an Event);
//! with `repair: true` the audit after it repairs both, `IndexInSync` turns True and the index
//! equals MongoDB again; without `spec.audit` the CronJob goes.

use std::time::Duration;

use e2e::cluster::{self, Install, Traffic};
use e2e::rig::rig;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::jiff::Timestamp;
use messagepipeline_crd::{AuditStatus, MessagePipeline};
use pipeline_contract::install::SearchEndpoint;
use serde_json::{Value, json};
use uuid::Uuid;

const READY_WITHIN: Duration = Duration::from_secs(240);
/// The next minute's run: the CronJob controller's tick, the pod starting on a shared 2-core
/// node, the audit itself.
const AUDITED_WITHIN: Duration = Duration::from_secs(180);
const CONVERGE_WITHIN: Duration = Duration::from_secs(120);

fn in_sync(mp: &MessagePipeline) -> Option<(String, String, String)> {
    let c = mp
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "IndexInSync")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// The last audit, when it started after `after`.
fn audited_after(mp: &MessagePipeline, after: Timestamp) -> Option<&AuditStatus> {
    let a = mp.status.as_ref()?.audit.as_ref()?;
    let started: Timestamp = a.start_time.parse().ok()?;
    (started > after).then_some(a)
}

/// The index, behind the pipeline's back: one document deleted, one written that MongoDB does
/// not have (a copy of another with a new id). Returns (the deleted id, the orphan's id).
async fn damage(alias: &str, ids: &[Uuid]) -> (Uuid, Uuid) {
    let http = reqwest::Client::new();
    let search = SearchEndpoint::new(rig().search_url());
    let (gone, model) = (ids[0], ids[1]);
    let deleted = search
        .request(
            &http,
            reqwest::Method::DELETE,
            &format!("/{alias}/_doc/{gone}?refresh=true"),
        )
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{deleted:?}");
    let doc: Value = search
        .request(
            &http,
            reqwest::Method::GET,
            &format!("/{alias}/_doc/{model}"),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let orphan = Uuid::new_v4();
    let mut source = doc["_source"].clone();
    source["id"] = json!(orphan.to_string());
    let written = search
        .request(
            &http,
            reqwest::Method::PUT,
            &format!("/{alias}/_doc/{orphan}?version=1&version_type=external&refresh=true"),
        )
        .json(&source)
        .send()
        .await
        .unwrap();
    assert!(written.status().is_success(), "{:?}", written.text().await);
    (gone, orphan)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_scheduled_audit_reports_damage_to_the_index_then_repairs_it() {
    let install = Install::new("audit").await;
    let pipeline = install
        .ready_pipeline(
            "chat",
            rig().pod_endpoints().search_url,
            json!({
                "api": {"replicas": 1},
                "indexer": {"replicas": 1},
                "audit": {"schedule": "* * * * *"},
            }),
            (1, 1),
            READY_WITHIN,
        )
        .await;
    let cron = install
        .api::<CronJob>()
        .get(&format!("{}-audit", pipeline.name))
        .await
        .expect("the audit's CronJob");
    assert_eq!(
        cron.spec.as_ref().map(|s| s.schedule.as_str()),
        Some("* * * * *")
    );

    let base = pipeline.api_base(&install).await;
    let traffic = Traffic::start(&base, 2, Duration::from_millis(20));
    traffic.progresses(60, Duration::from_secs(120)).await;
    let (acked, writes, _) = traffic.stop().await;
    let documents = pipeline.verify(&acked, CONVERGE_WITHIN).await;
    let live: Vec<Uuid> = pipeline
        .stored()
        .await
        .into_iter()
        .filter(|(_, (_, deleted))| !deleted)
        .map(|(id, _)| id)
        .collect();
    assert!(live.len() >= 2, "{live:?}");

    let damaged_at = Timestamp::now();
    let (gone, orphan) = damage(&pipeline.alias, &live).await;
    let found = pipeline
        .until(
            &install,
            "an audit that found the damage",
            AUDITED_WITHIN,
            |mp| audited_after(mp, damaged_at).is_some(),
        )
        .await;
    let audit = audited_after(&found, damaged_at).unwrap();
    assert_eq!(audit.outcome, "Diverged", "{audit:?}");
    assert_eq!(
        (
            audit.found.missing,
            audit.found.orphan,
            audit.found.stale,
            audit.found.resurrected
        ),
        (1, 1, 0, 0),
        "exactly the damage done: {audit:?}"
    );
    assert_eq!(audit.repaired.missing + audit.repaired.orphan, 0);
    assert_eq!(audit.mongodb_documents, documents as u64, "{audit:?}");
    let (status, reason, message) = in_sync(&found).unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "DivergenceFound")
    );
    assert!(
        message.contains("missing 1, orphan 1") && message.contains("spec.audit.repair"),
        "{message}"
    );
    assert_eq!(cluster::condition(&found, "Degraded"), Some("True"));
    assert_eq!(
        cluster::condition(&found, "Ready"),
        Some("True"),
        "the pipeline serves"
    );
    eprintln!("audit after {writes} writes: {audit:?}");

    let repair_from = Timestamp::now();
    install
        .change_spec("chat", |spec| {
            spec["audit"]["repair"] = json!(true);
        })
        .await;
    let repaired = pipeline
        .until(
            &install,
            "an audit that repaired it",
            AUDITED_WITHIN,
            |mp| audited_after(mp, repair_from).is_some(),
        )
        .await;
    let audit = audited_after(&repaired, repair_from).unwrap();
    assert_eq!(audit.outcome, "Repaired", "{audit:?}");
    assert_eq!(
        (audit.repaired.missing, audit.repaired.orphan),
        (1, 1),
        "{audit:?}"
    );
    let (status, reason, _) = in_sync(&repaired).unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Repaired"));
    assert_eq!(
        pipeline.verify(&acked, CONVERGE_WITHIN).await,
        documents,
        "the index equals MongoDB again"
    );
    let indexed = pipeline.indexed().await.unwrap();
    assert!(indexed.contains_key(&gone) && !indexed.contains_key(&orphan));

    install
        .assert_events(&["DivergenceFound", "Repaired"])
        .await;

    install
        .change_spec("chat", |spec| {
            spec.as_object_mut().unwrap().remove("audit");
        })
        .await;
    let name = format!("{}-audit", pipeline.name);
    let crons = install.api::<CronJob>();
    e2e::wait::until("the audit's CronJob deleted", CONVERGE_WITHIN, || async {
        crons
            .get_opt(&name)
            .await
            .is_ok_and(|c| c.is_none())
            .then_some(())
    })
    .await;
    install.remove().await;
}
