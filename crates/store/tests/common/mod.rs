//! Fresh databases for tests: a temporary SQLite file, or a new Postgres database on the server named by
//! `USERRL_TEST_POSTGRES_URL` (scripts/test-postgres starts one). Postgres tests print a notice and pass
//! when that variable is unset.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::Connection;
use userrl_store::{NewRun, RunKind, Store};

pub const POSTGRES_ENV: &str = "USERRL_TEST_POSTGRES_URL";

/// A store on its own database; the temporary directory lives as long as it does.
pub struct TestDb {
    pub store: Store,
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

pub async fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/nested/dir/test.db", dir.path().display());
    let store = Store::connect(&url).await.unwrap();
    TestDb { store, url, _dir: Some(dir) }
}

/// The server URL with its database name replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

/// A fresh database on the test server, or `None` (with a notice) when no server is configured.
pub async fn postgres(test: &str) -> Option<TestDb> {
    let url = postgres_database(test).await?;
    let store = Store::connect(&url).await.unwrap();
    Some(TestDb { store, url, _dir: None })
}

/// The URL of a fresh, empty database (no migrations run) on the test server, or `None` (with a notice).
pub async fn postgres_database(test: &str) -> Option<String> {
    let Ok(admin_url) = std::env::var(POSTGRES_ENV) else {
        eprintln!("skipping the Postgres variant of {test}: {POSTGRES_ENV} is not set (see scripts/test-postgres)");
        return None;
    };
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let name = format!("userrl_t{}_{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed), nanos);
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\""))).execute(&mut admin).await.unwrap();
    admin.close().await.unwrap();
    Some(with_database(&admin_url, &name))
}

pub fn new_run(name: &str) -> NewRun {
    NewRun {
        name: name.into(),
        kind: RunKind::Train,
        config: "name = \"t\"\n".into(),
        gyms: vec!["intention".into(), "turtle".into()],
        model: "tiny".into(),
        device: "cpu".into(),
        total_steps: 10,
    }
}

/// Tests `sqlite_tests::<name>` and `postgres_tests::<name>`, each running the async fn `<name>(store)` of the
/// calling module on a fresh database.
#[macro_export]
macro_rules! both_dialects {
    ($($name:ident),* $(,)?) => {
        mod sqlite_tests {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $crate::common::sqlite().await;
                    super::$name(db.store.clone()).await;
                }
            )*
        }
        mod postgres_tests {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(db) = $crate::common::postgres(stringify!($name)).await {
                        super::$name(db.store.clone()).await;
                        db.store.close().await;
                    }
                }
            )*
        }
    };
}

#[test]
fn database_names_are_replaced() {
    assert_eq!(with_database("postgres://u@127.0.0.1:5433/postgres", "x"), "postgres://u@127.0.0.1:5433/x");
    assert_eq!(with_database("postgres://u@h:1/postgres?sslmode=disable", "x"), "postgres://u@h:1/x?sslmode=disable");
    assert_eq!(with_database("postgres://u@h:1", "x"), "postgres://u@h:1/x");
}
