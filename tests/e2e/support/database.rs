//! A fresh database per test: a SQLite file in the test's directory, or a PostgreSQL database
//! created on `TEST_DATABASE_URL` and dropped when the test ends.

use sea_orm::{ConnectionTrait, Database};
use tempfile::TempDir;

/// Which database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server to create test databases on, or `None` to skip (never under `CI`).
pub fn postgres_admin_url() -> Option<String> {
    match std::env::var("TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!("CI is set but TEST_DATABASE_URL is not: PostgreSQL tests must run in CI")
        }
        _ => {
            eprintln!("skipping PostgreSQL test: TEST_DATABASE_URL is not set");
            None
        }
    }
}

/// A database created for one test and dropped when the test ends, even if it panics.
pub struct TestDatabase {
    pub url: String,
    postgres: Option<(String, String)>, // (admin url, database name)
}

impl TestDatabase {
    /// Another handle on a database some other test app owns (it is not dropped through this one).
    pub fn shared(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            postgres: None,
        }
    }

    pub async fn create(backend: Backend, dir: &TempDir) -> Option<Self> {
        match backend {
            Backend::Sqlite => Some(Self {
                url: service_accounts_api::config::sqlite_url(&dir.path().join("test.db")),
                postgres: None,
            }),
            Backend::Postgres => {
                let admin_url = postgres_admin_url()?;
                let name = format!("sa_test_{}", uuid::Uuid::now_v7().simple());
                let admin = Database::connect(&admin_url)
                    .await
                    .expect("connect to TEST_DATABASE_URL");
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("create test database");
                admin.close().await.ok();
                let url = replace_database(&admin_url, &name);
                Some(Self {
                    url,
                    postgres: Some((admin_url, name)),
                })
            }
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some((admin_url, name)) = self.postgres.take() else {
            return;
        };
        // Drop runs outside async context; use a private runtime on its own thread.
        let result = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let admin = Database::connect(&admin_url)
                    .await
                    .map_err(std::io::Error::other)?;
                admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .map_err(std::io::Error::other)?;
                admin.close().await.map_err(std::io::Error::other)
            })
        })
        .join();
        if !matches!(result, Ok(Ok(()))) {
            eprintln!("warning: could not drop a test database: {result:?}");
        }
    }
}

pub fn replace_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let authority_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[authority_end..].find('/') {
        Some(slash) => &base[..authority_end + slash],
        None => base,
    };
    format!("{base}/{name}{query}")
}
