//! `indexer audit [--repair]` against the rig: MongoDB (FerretDB), Kafka and OpenSearch, with a
//! real indexer applying the events. The index is damaged behind the indexer's back in each of the
//! four ways; the audit must report exactly those documents, `--repair` must fix them, and a
//! second audit must find nothing.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Stack, converge, search_document, stored_message as message};
use e2e::state;
use e2e::{rig::rig, wait};
use indexer::audit::Drift;
use indexer::audit_tool::{self, AuditReport, EXIT_DIVERGED, Finding};
use indexer::config::{AuditArgs, Command};
use indexer::indexed::Repair;
use pipeline_contract::document::StoredMessage;
use pipeline_contract::search::SearchDocument;
use serde_json::Value;
use uuid::Uuid;

/// A stack and what the audit tests do to it.
struct Scenario {
    stack: Stack,
    http: reqwest::Client,
}

impl Scenario {
    async fn new(messages: &[StoredMessage]) -> Self {
        Self {
            stack: Stack::new(messages).await,
            http: reqwest::Client::new(),
        }
    }

    fn args(&self, extra: &[&str]) -> AuditArgs {
        // Small pages: the walk crosses many page boundaries on both sides.
        let mut all = vec!["--group", &self.stack.group, "--page-size", "4"];
        all.extend_from_slice(extra);
        let Command::Audit(args) = self.stack.command("audit", &all) else {
            unreachable!("parsed `audit`")
        };
        args
    }

    async fn audit(&self, extra: &[&str]) -> (AuditReport, BTreeMap<String, Finding>) {
        let mut findings = BTreeMap::new();
        let report = audit_tool::audit(&self.args(extra), |f| {
            assert!(
                findings.insert(f.id.clone(), f.clone()).is_none(),
                "{} reported twice",
                f.id
            );
        })
        .await
        .expect("the audit runs");
        (report, findings)
    }

    /// A write to the concrete index, as if someone other than the indexer made it; its status.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&SearchDocument>,
    ) -> (reqwest::StatusCode, Value) {
        let url = format!(
            "{}/{}/{path}",
            rig().search_url(),
            self.stack.fixture.layout.first_index()
        );
        let mut request = self.http.request(method, &url);
        if let Some(doc) = body {
            request = request.json(doc);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or_default())
    }

    async fn damage(&self, method: reqwest::Method, path: &str, body: Option<&SearchDocument>) {
        let (status, answer) = self.send(method, path, body).await;
        assert!(status.is_success(), "{path}: {status} {answer}");
    }

    /// Replaces the document of `m.id` with `doc` at `doc.version`, even an older version than
    /// the index holds: as an index restored from an old snapshot would hold it.
    async fn overwrite(&self, m: &StoredMessage, doc: &SearchDocument) {
        self.damage(reqwest::Method::DELETE, &format!("_doc/{}", m.id), None)
            .await;
        let path = format!(
            "_doc/{}?version={}&version_type=external",
            doc.id, doc.version
        );
        // The engine remembers the delete's version until it prunes it (gc_deletes 0s, on a
        // refresh once its clock has moved on); until then the older version is refused.
        wait::until(
            "the delete's version is pruned",
            Duration::from_secs(30),
            || async {
                self.send(reqwest::Method::POST, "_refresh", None).await;
                let (status, answer) = self.send(reqwest::Method::PUT, &path, Some(doc)).await;
                match status.as_u16() {
                    200 | 201 => Some(()),
                    409 => None,
                    _ => panic!("{path}: {status} {answer}"),
                }
            },
        )
        .await;
    }
}

#[tokio::test]
async fn the_audit_reports_each_kind_of_damage_exactly_and_repair_fixes_it() {
    let mut messages: Vec<StoredMessage> = (0..9).map(|_| message(1, false)).collect();
    messages.extend((0..3).map(|_| message(3, false)));
    messages.extend((0..3).map(|_| message(2, true)));
    let scenario = Scenario::new(&messages).await;
    let (_metrics, stop, task) = scenario.stack.fixture.start(&scenario.stack.group);
    converge(
        &scenario.stack.fixture,
        &scenario.stack.stored().await,
        "the indexer applies every event",
    )
    .await;

    let (report, findings) = scenario.audit(&[]).await;
    assert!(findings.is_empty(), "a caught-up pipeline: {findings:?}");
    assert_eq!((report.stored, report.indexed), (15, 15));
    assert_eq!((report.exit_code(), report.unsettled), (0, None));

    // The damage, one document of each kind.
    let missing = &messages[0];
    scenario
        .damage(
            reqwest::Method::DELETE,
            &format!("_doc/{}", missing.id),
            None,
        )
        .await;
    let stale = &messages[9];
    let mut older = search_document(stale);
    older.version = 2;
    scenario.overwrite(stale, &older).await;
    let resurrected = &messages[12];
    let mut alive = search_document(&message(1, false));
    (alive.id, alive.tenant_id) = (Uuid::parse_str(&resurrected.id).unwrap(), "tenant-a".into());
    scenario.overwrite(resurrected, &alive).await;
    let mut orphan = search_document(&message(1, false));
    orphan.id = Uuid::new_v4();
    let path = format!("_doc/{}?version=1&version_type=external", orphan.id);
    scenario
        .damage(reqwest::Method::PUT, &path, Some(&orphan))
        .await;
    let damaged = state::indexed(scenario.stack.fixture.layout.alias())
        .await
        .unwrap();

    let want: BTreeMap<String, Drift> = [
        (missing.id.clone(), Drift::Missing),
        (stale.id.clone(), Drift::Stale),
        (resurrected.id.clone(), Drift::Resurrected),
        (orphan.id.to_string(), Drift::Orphan),
    ]
    .into();
    let classes = |findings: &BTreeMap<String, Finding>| -> BTreeMap<String, Drift> {
        findings
            .iter()
            .map(|(id, f)| (id.clone(), f.drift))
            .collect()
    };

    let (report, findings) = scenario.audit(&[]).await;
    assert_eq!(
        classes(&findings),
        want,
        "the report names exactly the damage"
    );
    assert!(findings.values().all(|f| f.repair.is_none()));
    assert_eq!(
        (report.stored, report.indexed, report.found_total()),
        (15, 15, 4),
        "{report:?}"
    );
    assert_eq!(report.exit_code(), EXIT_DIVERGED);
    assert_eq!(
        state::indexed(scenario.stack.fixture.layout.alias())
            .await
            .unwrap(),
        damaged,
        "without --repair the index is left alone"
    );
    let f = &findings[&stale.id];
    assert_eq!(
        (
            f.stored.as_ref().unwrap().version,
            f.indexed.as_ref().unwrap().version
        ),
        (3, 2)
    );

    let (report, findings) = scenario.audit(&["--repair"]).await;
    assert_eq!(classes(&findings), want);
    assert!(
        findings.values().all(|f| f.repair == Some(Repair::Done)),
        "{findings:?}"
    );
    assert_eq!((report.remaining(), report.exit_code()), (0, 0));

    let (report, findings) = scenario.audit(&[]).await;
    assert!(findings.is_empty(), "after the repair: {findings:?}");
    assert_eq!(report.exit_code(), 0);
    assert_eq!(
        state::indexed(scenario.stack.fixture.layout.alias())
            .await
            .unwrap(),
        scenario.stack.stored().await,
        "the index equals MongoDB again"
    );
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn a_change_the_indexer_has_not_applied_yet_is_waited_for_and_said_when_it_is_not() {
    // Nothing consumes the topic: the one event stays in flight for the whole audit.
    let scenario = Scenario::new(&[message(1, false)]).await;
    let started = std::time::Instant::now();
    let (report, findings) = scenario.audit(&["--settle-timeout-secs", "3"]).await;
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "the re-check waited for the indexer's group"
    );
    assert_eq!(report.unsettled, Some("the indexer's consumer group"));
    assert_eq!(
        findings.values().map(|f| f.drift).collect::<Vec<_>>(),
        [Drift::Missing]
    );

    // Once an indexer applies it, the same audit finds nothing and waits for nothing.
    let (_metrics, stop, task) = scenario.stack.fixture.start(&scenario.stack.group);
    converge(
        &scenario.stack.fixture,
        &scenario.stack.stored().await,
        "the indexer catches up",
    )
    .await;
    let (report, findings) = scenario.audit(&["--settle-timeout-secs", "3"]).await;
    assert!(findings.is_empty(), "{findings:?}");
    assert_eq!(report.unsettled, None);
    stop.cancel();
    task.await.unwrap();
}
