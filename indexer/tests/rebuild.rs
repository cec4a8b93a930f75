//! `indexer rebuild` against the rig, with a real indexer applying the live events: the next
//! generation is built from MongoDB and the topic while writers change messages and searches
//! run the whole time, the alias swaps to it, and afterwards the index equals MongoDB document by
//! document. And when the index behind the alias is lost, the rebuild brings it back and the
//! indexer, whose breaker opened meanwhile, resumes with nothing missing.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{Stack, converge_to, stored_message};
use e2e::{rig::rig, wait};
use indexer::audit_tool;
use indexer::breaker::BreakerState;
use indexer::config::Command;
use indexer::rebuild::{self, Phase, RebuildError};
use pipeline_contract::document::StoredMessage;
use uuid::Uuid;

fn rebuild_args(stack: &Stack, extra: &[&str]) -> indexer::config::RebuildArgs {
    // Small batches: the scan and the catch-up cross many pages.
    let mut all = vec!["--batch-size", "10"];
    all.extend_from_slice(extra);
    let Command::Rebuild(args) = stack.command("rebuild", &all) else {
        unreachable!("parsed `rebuild`")
    };
    args
}

async fn alias_indices(stack: &Stack) -> Vec<String> {
    let url = format!(
        "{}/{}",
        rig().search_url(),
        stack.fixture.layout.alias_lookup_path()
    );
    let body: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    let mut indices: Vec<String> = body
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    indices.sort();
    indices
}

/// Changes messages the whole time, as the API would: creates, updates and deletes, each stored
/// in MongoDB and then published.
fn writer(
    stack: Arc<Stack>,
    start: Vec<StoredMessage>,
    writes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut live = start;
        while !stop.load(Ordering::Relaxed) {
            let k = fastrand::usize(..live.len().max(1));
            let op = if live.is_empty() {
                0
            } else {
                fastrand::u8(..3)
            };
            match op {
                0 => {
                    let m = stored_message(1, false);
                    stack.write(&m).await;
                    live.push(m);
                }
                1 => {
                    let m = &mut live[k];
                    m.version += 1;
                    m.content = Some(format!("content v{}", m.version));
                    m.updated_at = mongodb::bson::DateTime::now();
                    stack.write(m).await;
                }
                _ => {
                    let mut m = live.swap_remove(k);
                    m.version += 1;
                    m.deleted = true;
                    (m.content, m.sender_id, m.metadata_json) = (None, None, None);
                    m.deleted_at = Some(mongodb::bson::DateTime::now());
                    stack.write(&m).await;
                }
            }
            writes.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

/// Searches the alias the whole time; returns (searches, failures with their answers).
fn searcher(
    stack: Arc<Stack>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, Vec<String>)> {
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let url = format!(
            "{}/{}/_search",
            rig().search_url(),
            stack.fixture.layout.alias()
        );
        let (mut searches, mut failures) = (0, Vec::new());
        while !stop.load(Ordering::Relaxed) {
            let answer = http
                .post(&url)
                .json(&serde_json::json!({"size": 1, "query": {"term": {"deleted": false}}}))
                .send()
                .await;
            searches += 1;
            match answer {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => failures.push(format!(
                    "{}: {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                )),
                Err(e) => failures.push(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (searches, failures)
    })
}

#[tokio::test]
async fn a_rebuild_under_writes_and_searches_swaps_to_an_index_equal_to_mongodb() {
    let start: Vec<StoredMessage> = (0..400).map(|_| stored_message(1, false)).collect();
    let stack = Arc::new(Stack::new(&start).await);
    let (_metrics, stop_indexer, indexer) = stack.fixture.start(&stack.group);
    converge_to(&stack, "the indexer applies the first messages").await;
    let first = stack.fixture.layout.first_index();
    assert_eq!(alias_indices(&stack).await, [first.as_str()]);

    let (stop, writes) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let writer = writer(
        Arc::clone(&stack),
        start,
        Arc::clone(&writes),
        Arc::clone(&stop),
    );
    let searches = searcher(Arc::clone(&stack), Arc::clone(&stop));
    wait::until("the writers run", Duration::from_secs(30), || async {
        (writes.load(Ordering::Relaxed) >= 10).then_some(())
    })
    .await;
    let before = writes.load(Ordering::Relaxed);
    let (mut writes_at_swap, mut swaps) = (0, 0);
    let report = rebuild::rebuild(&rebuild_args(&stack, &[]), |p| {
        if p.phase == Phase::Swapped {
            writes_at_swap = writes.load(Ordering::Relaxed);
            swaps += 1;
        }
    })
    .await
    .expect("the rebuild runs");
    // Writers and searches go on across the swap and after it before they stop.
    let after = writes.load(Ordering::Relaxed);
    wait::until(
        "writes after the rebuild",
        Duration::from_secs(30),
        || async { (writes.load(Ordering::Relaxed) >= after + 10).then_some(()) },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let (searched, failures) = searches.await.unwrap();

    let next = stack.fixture.layout.index_of(2);
    assert_eq!(
        (report.generation, report.index.as_str()),
        (2, next.as_str())
    );
    assert_eq!(report.previous, [first.as_str()]);
    assert!(report.scanned.applied >= 400, "{report:?}");
    assert_eq!(
        report.scanned.rejected + report.caught_up.rejected + report.after_swap.rejected,
        0,
        "{report:?}"
    );
    assert_eq!(swaps, 1);
    assert!(
        writes_at_swap > before && after > before,
        "writes during the scan and catch-up ({before} before, {writes_at_swap} at the swap, \
         {after} after)"
    );
    assert!(
        searched > 20 && failures.is_empty(),
        "{searched} searches, failures: {failures:?}"
    );
    assert_eq!(
        alias_indices(&stack).await,
        [next],
        "the alias moved to the new index alone"
    );

    converge_to(&stack, "the new index equals MongoDB").await;
    let Command::Audit(audit) = stack.command("audit", &["--group", &stack.group]) else {
        unreachable!()
    };
    let audited = audit_tool::audit(&audit, |f| panic!("divergent after the rebuild: {f:?}"))
        .await
        .unwrap();
    assert_eq!(audited.found_total(), 0);

    let error = rebuild::rebuild(&rebuild_args(&stack, &["--generation", "2"]), |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            RebuildError::NotNewer {
                asked: 2,
                current: 2,
                next: 3
            }
        ),
        "{error}"
    );
    stop_indexer.cancel();
    indexer.await.unwrap();
}

#[tokio::test]
async fn a_lost_index_is_rebuilt_and_the_indexer_resumes_with_nothing_missing() {
    let start: Vec<StoredMessage> = (0..100).map(|_| stored_message(1, false)).collect();
    let stack = Stack::new(&start).await;
    let mut args = stack.fixture.args(&stack.group);
    args.breaker_failure_threshold = 2;
    args.breaker_cooldown_ms = 500;
    let (metrics, stop_indexer, indexer) = stack.fixture.start_with(args);
    converge_to(&stack, "the indexer applies the first messages").await;

    let first = stack.fixture.layout.first_index();
    let gone = reqwest::Client::new()
        .delete(format!("{}/{first}", rig().search_url()))
        .send()
        .await
        .unwrap();
    assert!(gone.status().is_success());
    // Changes go on while there is no index: the indexer cannot write them anywhere.
    for _ in 0..20 {
        stack.write(&stored_message(1, false)).await;
    }
    wait::until("the breaker opens", Duration::from_secs(60), || async {
        metrics.breaker_is(BreakerState::Open).then_some(())
    })
    .await;

    let report = rebuild::rebuild(&rebuild_args(&stack, &["--delete-old"]), |_| {})
        .await
        .expect("the rebuild runs");
    assert_eq!(
        (report.generation, report.previous.len()),
        (1, 0),
        "{report:?}"
    );
    assert_eq!(report.scanned.applied, 120);
    assert_eq!(alias_indices(&stack).await, [first]);
    wait::until("the breaker closes", Duration::from_secs(60), || async {
        metrics.breaker_is(BreakerState::Closed).then_some(())
    })
    .await;
    // And what the indexer still had to write arrives: one more change after the rebuild.
    let late = stored_message(1, false);
    stack.write(&late).await;
    converge_to(
        &stack,
        "the index equals MongoDB, the change after the rebuild included",
    )
    .await;
    assert!(
        stack
            .stored()
            .await
            .contains_key(&Uuid::parse_str(&late.id).unwrap())
    );
    assert_eq!(metrics.dead_lettered_total(), 0);
    stop_indexer.cancel();
    indexer.await.unwrap();
}

/// The operator's rebuild Job killed after it said `AwaitingSwap`: the operator swaps the alias
/// (the Lease said so), the pod never applies the events that reached only the old index between
/// its catch-up and the swap, and the Job starts a replacement pod for the same generation. The
/// replacement must finish, and the swapped-in index must miss nothing.
#[tokio::test]
async fn a_rebuild_pod_killed_after_awaiting_swap_is_finished_by_its_replacement() {
    use pipeline_contract::install::{SearchEndpoint, create_generation, swap_alias};
    let start: Vec<StoredMessage> = (0..200).map(|_| stored_message(1, false)).collect();
    let stack = Arc::new(Stack::new(&start).await);
    let (_metrics, stop_indexer, indexer) = stack.fixture.start(&stack.group);
    converge_to(&stack, "the indexer applies the first messages").await;
    let (stop, writes) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let writer = writer(
        Arc::clone(&stack),
        start,
        Arc::clone(&writes),
        Arc::clone(&stop),
    );
    // What the operator does first: the generation, with its staging alias.
    let (http, endpoint) = (
        reqwest::Client::new(),
        SearchEndpoint::new(rig().search_url()),
    );
    let layout = stack.fixture.layout.clone();
    create_generation(&http, &endpoint, &layout, 2)
        .await
        .unwrap();
    let args = rebuild_args(&stack, &["--operator-swaps", "--generation", "2"]);

    // The first pod, killed once it says AwaitingSwap.
    let awaiting = Arc::new(AtomicBool::new(false));
    let said = Arc::clone(&awaiting);
    let first_args = args.clone();
    let first = tokio::spawn(async move {
        let _ = rebuild::rebuild(&first_args, |p| {
            if p.phase == Phase::AwaitingSwap {
                said.store(true, Ordering::SeqCst);
            }
        })
        .await;
    });
    wait::until(
        "the first pod awaits the swap",
        Duration::from_secs(120),
        || async { awaiting.load(Ordering::SeqCst).then_some(()) },
    )
    .await;
    first.abort();
    let _ = first.await;
    // Changes between its catch-up and the swap reach only the old index.
    let at_kill = writes.load(Ordering::Relaxed);
    wait::until(
        "writes before the swap",
        Duration::from_secs(30),
        || async { (writes.load(Ordering::Relaxed) >= at_kill + 30).then_some(()) },
    )
    .await;
    swap_alias(&http, &endpoint, &layout, 2, &[layout.first_index()])
        .await
        .unwrap();
    assert_eq!(alias_indices(&stack).await, [layout.index_of(2)]);

    // The Job's replacement pod, for the same generation.
    let report = rebuild::rebuild(&args, |_| {})
        .await
        .expect("the replacement pod finishes the rebuild");
    assert_eq!(report.generation, 2);
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    converge_to(&stack, "the swapped-in index equals MongoDB").await;
    stop_indexer.cancel();
    indexer.await.unwrap();
}
