#![allow(clippy::unwrap_used)]

use gatehouse_store::{SqliteStore, Store, contract};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_passes_the_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("gatehouse.db"), true).unwrap();
    contract::run_all(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_reopens_with_data_and_migrations_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.db");
    {
        let store = SqliteStore::open(&path, false).unwrap();
        store.put_policy("kept", "admin", 1).await.unwrap();
    }
    let store = SqliteStore::open(&path, false).unwrap();
    assert_eq!(store.current_policy().await.unwrap().unwrap().text, "kept");
}
