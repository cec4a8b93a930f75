//! The rig's secured MongoDB-wire server (a FerretDB TLS listener whose PLAIN logins PostgreSQL
//! checks, devstack/services/ferretdb_secure.sh) does what the pipeline's least-privilege set-up
//! relies on, through the connection string a worker is given: over TLS with the rig's CA,
//! `mp-api` writes and reads; `mp-audit` reads what `mp-api` wrote and cannot write; a client
//! without credentials can do nothing; a wrong password and a server whose CA is not given fail
//! with errors that say so.

use std::time::Duration;

use e2e::{rig::rig, unique};
use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use mongodb::options::ClientOptions;
use mongodb::{Client, Collection};

async fn client(uri: &str) -> Client {
    let mut options = ClientOptions::parse(uri).await.expect("a valid URI");
    // Refusals are answered at once; an unreachable server would take the default 30 s.
    options.server_selection_timeout = Some(Duration::from_secs(5));
    Client::with_options(options).expect("client")
}

async fn as_principal(principal: &str) -> Client {
    client(&rig().mongodb_secure_uri(
        Some((principal, rig().mongodb_password(principal))),
        Some(rig().ca_cert()),
    ))
    .await
}

/// The collection `messages` of database `name` as `client` sees it.
fn messages(client: &Client, name: &str) -> Collection<Document> {
    client.database(name).collection("messages")
}

/// A fresh database in which mp-api wrote one message `m1` (version 1); (name, mp-api's view).
async fn written_by_api() -> (String, Collection<Document>) {
    let name = database_name();
    let api = messages(&as_principal("api").await, &name);
    api.insert_one(doc! {"_id": "m1", "version": 1_i64})
        .await
        .unwrap();
    (name, api)
}

/// Asserts that mp-api still sees `m1` alone, unchanged, then drops the database.
async fn only_m1_unchanged(name: &str, api: &Collection<Document>) {
    assert_eq!(api.count_documents(doc! {}).await.unwrap(), 1);
    let found = api.find_one(doc! {"_id": "m1"}).await.unwrap().unwrap();
    assert_eq!(found.get_i64("version").unwrap(), 1);
    as_principal("api")
        .await
        .database(name)
        .drop()
        .await
        .unwrap();
}

fn database_name() -> String {
    // Database names may not contain '-'.
    unique("secured").replace('-', "_")
}

/// The full error text, causes included.
fn text(error: &mongodb::error::Error) -> String {
    format!("{error} / {error:?}")
}

#[tokio::test]
async fn the_api_principal_writes_and_reads_over_tls() {
    let db = as_principal("api").await.database(&database_name());
    let messages: Collection<Document> = db.collection("messages");
    let id = uuid::Uuid::new_v4().to_string();
    messages
        .insert_one(doc! {"_id": &id, "version": 1_i64})
        .await
        .expect("mp-api inserts");
    let updated = messages
        .update_one(
            doc! {"_id": &id, "version": 1_i64},
            doc! {"$set": {"version": 2_i64}},
        )
        .await
        .expect("mp-api updates");
    assert_eq!(updated.modified_count, 1);
    let found = messages.find_one(doc! {"_id": &id}).await.unwrap().unwrap();
    assert_eq!(found.get_i64("version").unwrap(), 2);
    messages.delete_one(doc! {"_id": &id}).await.unwrap();
    db.drop().await.unwrap();
}

#[tokio::test]
async fn the_audit_principal_reads_what_the_api_wrote_and_cannot_write() {
    let (name, api) = written_by_api().await;
    let audit = messages(&as_principal("audit").await, &name);
    let read: Vec<Document> = audit
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(read.len(), 1, "{read:?}");
    let refused = audit
        .insert_one(doc! {"_id": "m2", "version": 1_i64})
        .await
        .expect_err("mp-audit may not write");
    assert!(
        text(&refused).contains("permission denied"),
        "{}",
        text(&refused)
    );
    audit
        .update_one(doc! {"_id": "m1"}, doc! {"$set": {"version": 9_i64}})
        .await
        .expect_err("nor update");
    only_m1_unchanged(&name, &api).await;
}

#[tokio::test]
async fn without_credentials_nothing_can_be_read_or_written() {
    let (name, api) = written_by_api().await;
    let anonymous = messages(
        &client(&rig().mongodb_secure_uri(None, Some(rig().ca_cert()))).await,
        &name,
    );
    let read = anonymous.find_one(doc! {}).await;
    assert!(
        !matches!(read, Ok(Some(_))),
        "read without credentials: {read:?}"
    );
    anonymous
        .insert_one(doc! {"_id": "m2"})
        .await
        .expect_err("written without credentials");
    anonymous
        .update_one(doc! {"_id": "m1"}, doc! {"$set": {"version": 9_i64}})
        .await
        .expect_err("updated without credentials");
    only_m1_unchanged(&name, &api).await;
}

#[tokio::test]
async fn a_wrong_password_fails_the_first_command_as_an_authentication_failure() {
    let db =
        client(&rig().mongodb_secure_uri(Some(("api", "not-the-password")), Some(rig().ca_cert())))
            .await
            .database(&database_name());
    let error = db
        .collection::<Document>("messages")
        .insert_one(doc! {"_id": "m1"})
        .await
        .expect_err("refused");
    assert!(
        text(&error).contains("password authentication failed"),
        "{}",
        text(&error)
    );
}

#[tokio::test]
async fn without_the_ca_file_the_servers_certificate_is_not_trusted() {
    let db = client(&rig().mongodb_secure_uri(Some(("api", rig().mongodb_password("api"))), None))
        .await
        .database(&database_name());
    let error = db
        .collection::<Document>("messages")
        .find_one(doc! {})
        .await
        .expect_err("refused");
    assert!(
        text(&error).contains("invalid peer certificate"),
        "{}",
        text(&error)
    );
}
