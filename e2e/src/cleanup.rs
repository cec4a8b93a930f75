//! Removing what a passed test made on the rig: each test makes its own index layout and topics
//! under unique names, and the rig's engines and Kafka keep them otherwise (a few dozen
//! `make test` runs reach the engine's limit of 1,000 open shards).

use pipeline_contract::install::{SearchEndpoint, generations};
use pipeline_contract::search::IndexLayout;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;

use crate::rig::rig;

/// Deletes every generation of `layout`'s index and its template on the engine at `search_url`,
/// and `topics` on the rig's Kafka. Best effort: what fails stays, and no test fails for it.
pub async fn remove(search_url: &str, layout: &IndexLayout, topics: &[String]) {
    let http = reqwest::Client::new();
    let endpoint = SearchEndpoint::new(search_url);
    for index in generations(&http, &endpoint, layout)
        .await
        .unwrap_or_default()
    {
        let _ = http.delete(format!("{search_url}/{index}")).send().await;
    }
    let template = format!("{search_url}/_index_template/{}", layout.template_name());
    let _ = http.delete(template).send().await;
    if topics.is_empty() {
        return;
    }
    let Ok(admin) = ClientConfig::new()
        .set("bootstrap.servers", rig().kafka())
        .create::<AdminClient<DefaultClientContext>>()
    else {
        return;
    };
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let _ = admin.delete_topics(&names, &AdminOptions::new()).await;
}

/// [`remove`] from a `Drop`, on a thread with a runtime of its own (a `Drop` cannot await and may
/// run inside a runtime). Nothing is removed while the test is failing: what a failed test
/// leaves is what shows why.
pub fn remove_after_test(search_url: String, layout: IndexLayout, topics: Vec<String>) {
    if std::thread::panicking() {
        return;
    }
    let _ = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the cleanup")
            .block_on(remove(&search_url, &layout, &topics));
    })
    .join();
}
