//! The rig's MongoDB-wire server (FerretDB) does what the api-server relies on: documents keyed by
//! a UUID string, conditional updates on `{_id, version}`, `$inc`/`$push`/`$pull`, and a refused
//! duplicate `_id`.

use e2e::{rig::rig, unique};
use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::{Client, Collection, Database};

async fn database() -> Database {
    let client = Client::with_uri_str(rig().mongodb_uri())
        .await
        .expect("MongoDB client");
    // Database names may not contain '-'.
    client.database(&unique("smoke").replace('-', "_"))
}

fn is_duplicate_key(err: &mongodb::error::Error) -> bool {
    matches!(&*err.kind, ErrorKind::Write(WriteFailure::WriteError(e)) if e.code == 11000)
}

#[tokio::test]
async fn insert_find_and_conditional_update_on_version() {
    let db = database().await;
    let messages: Collection<Document> = db.collection("messages");
    let id = uuid::Uuid::new_v4().to_string();
    let other = uuid::Uuid::new_v4().to_string();
    messages
        .insert_one(doc! {"_id": &id, "tenantId": "t1", "content": "hello", "version": 1_i64, "tags": ["a"]})
        .await
        .expect("insert");
    messages
        .insert_one(doc! {"_id": &other, "tenantId": "t2", "content": "other", "version": 1_i64})
        .await
        .unwrap();

    let found = messages
        .find_one(doc! {"_id": &id, "tenantId": "t1"})
        .await
        .unwrap()
        .expect("found");
    assert_eq!(found.get_str("content").unwrap(), "hello");
    assert!(
        messages
            .find_one(doc! {"_id": &id, "tenantId": "t2"})
            .await
            .unwrap()
            .is_none()
    );

    // The write the api-server makes: only if nobody changed the message since we read version 1.
    let filter = doc! {"_id": &id, "tenantId": "t1", "version": 1_i64};
    let update = doc! {"$set": {"content": "edited", "version": 2_i64}};
    let first = messages
        .update_one(filter.clone(), update.clone())
        .await
        .unwrap();
    assert_eq!((first.matched_count, first.modified_count), (1, 1));
    let second = messages.update_one(filter, update).await.unwrap();
    assert_eq!(
        (second.matched_count, second.modified_count),
        (0, 0),
        "a stale version must not match"
    );

    let after = messages.find_one(doc! {"_id": &id}).await.unwrap().unwrap();
    assert_eq!(after.get_i64("version").unwrap(), 2);
    assert_eq!(after.get_str("content").unwrap(), "edited");

    let sorted: Vec<Document> = messages
        .find(doc! {})
        .sort(doc! {"tenantId": -1})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let tenants: Vec<&str> = sorted
        .iter()
        .map(|d| d.get_str("tenantId").unwrap())
        .collect();
    assert_eq!(tenants, ["t2", "t1"]);
    db.drop().await.unwrap();
}

#[tokio::test]
async fn inc_push_and_pull() {
    let db = database().await;
    let coll: Collection<Document> = db.collection("watermarks");
    let id = uuid::Uuid::new_v4().to_string();
    coll.insert_one(doc! {"_id": &id, "count": 1_i64, "items": ["a", "b"]})
        .await
        .unwrap();

    coll.update_one(doc! {"_id": &id}, doc! {"$inc": {"count": 4_i64}})
        .await
        .unwrap();
    coll.update_one(doc! {"_id": &id}, doc! {"$push": {"items": "c"}})
        .await
        .unwrap();
    coll.update_one(doc! {"_id": &id}, doc! {"$pull": {"items": "a"}})
        .await
        .unwrap();

    let d = coll.find_one(doc! {"_id": &id}).await.unwrap().unwrap();
    assert_eq!(d.get_i64("count").unwrap(), 5);
    let items: Vec<&str> = d
        .get_array("items")
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap())
        .collect();
    assert_eq!(items, ["b", "c"]);
    db.drop().await.unwrap();
}

#[tokio::test]
async fn duplicate_id_is_rejected_and_the_original_kept() {
    let db = database().await;
    let coll: Collection<Document> = db.collection("messages");
    let id = uuid::Uuid::new_v4().to_string();
    coll.insert_one(doc! {"_id": &id, "content": "original"})
        .await
        .unwrap();
    let err = coll
        .insert_one(doc! {"_id": &id, "content": "impostor"})
        .await
        .unwrap_err();
    assert!(
        is_duplicate_key(&err),
        "expected a duplicate key error (11000), got {err}"
    );
    let kept = coll.find_one(doc! {"_id": &id}).await.unwrap().unwrap();
    assert_eq!(kept.get_str("content").unwrap(), "original");
    db.drop().await.unwrap();
}
