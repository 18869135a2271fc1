//! Admin auth rows: the password hash made by the first-run setup page and the signed-in sessions. The web
//! layer (`userrl_app::auth`) owns the rules; this module only stores what it is given — a PHC string, never a
//! password, and the SHA-256 of a session token, never the token.

use sqlx::Row;

use crate::{Store, StoreError, clean, now_ms, on_pool};

/// A stored admin session (looked up by the hash of its token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthSession {
    pub token_hash: String,
    pub created_at: i64,
    /// Unix milliseconds after which the session no longer signs anyone in.
    pub expires_at: i64,
}

impl Store {
    /// The admin password hash stored by the setup page, if one was.
    pub async fn admin_password_hash(&self) -> Result<Option<String>, StoreError> {
        on_pool!(self, pool => {
            let hash: Option<String> = sqlx::query_scalar("SELECT password_hash FROM auth_admin WHERE id = 1")
                .fetch_optional(pool)
                .await?;
            Ok(hash)
        })
    }

    /// Stores the admin's password hash unless an admin exists already; `true` when this call created it.
    /// Atomic: of two racing calls exactly one succeeds.
    pub async fn create_admin(&self, password_hash: &str) -> Result<bool, StoreError> {
        let done = on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO auth_admin (id, password_hash, created_at) VALUES (1, $1, $2) ON CONFLICT (id) DO NOTHING",
            )
            .bind(clean(password_hash).as_ref())
            .bind(now_ms())
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(done == 1)
    }

    /// Records a session by the hash of its token.
    pub async fn create_session(
        &self,
        token_hash: &str,
        expires_at: i64,
        ip: &str,
        user_agent: &str,
    ) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO auth_sessions (token_hash, created_at, expires_at, ip, user_agent) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(clean(token_hash).as_ref())
            .bind(now_ms())
            .bind(expires_at)
            .bind(clean(ip).as_ref())
            .bind(clean(user_agent).as_ref())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// The session with this token hash, if it exists and has not expired at `now_ms`.
    pub async fn session(&self, token_hash: &str, now_ms: i64) -> Result<Option<AuthSession>, StoreError> {
        on_pool!(self, pool => {
            let row = sqlx::query(
                "SELECT token_hash, created_at, expires_at FROM auth_sessions WHERE token_hash = $1 AND expires_at > $2",
            )
            .bind(clean(token_hash).as_ref())
            .bind(now_ms)
            .fetch_optional(pool)
            .await?;
            match row {
                Some(row) => Ok(Some(AuthSession {
                    token_hash: row.try_get("token_hash")?,
                    created_at: row.try_get("created_at")?,
                    expires_at: row.try_get("expires_at")?,
                })),
                None => Ok(None),
            }
        })
    }

    /// Ends a session; `true` when it existed.
    pub async fn delete_session(&self, token_hash: &str) -> Result<bool, StoreError> {
        let done = on_pool!(self, pool => {
            sqlx::query("DELETE FROM auth_sessions WHERE token_hash = $1")
                .bind(clean(token_hash).as_ref())
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(done > 0)
    }

    /// Removes sessions that expired before `now_ms`; returns how many.
    pub async fn delete_expired_sessions(&self, now_ms: i64) -> Result<u64, StoreError> {
        let done = on_pool!(self, pool => {
            sqlx::query("DELETE FROM auth_sessions WHERE expires_at <= $1").bind(now_ms).execute(pool).await?.rows_affected()
        });
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn admin_is_created_once_and_sessions_expire() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        assert_eq!(store.admin_password_hash().await.unwrap(), None);
        assert!(store.create_admin("$argon2id$first").await.unwrap());
        assert!(!store.create_admin("$argon2id$second").await.unwrap(), "a second admin must be refused");
        assert_eq!(store.admin_password_hash().await.unwrap().as_deref(), Some("$argon2id$first"));

        store.create_session("live", 2_000, "127.0.0.1", "test").await.unwrap();
        store.create_session("old", 1_000, "127.0.0.1", "test").await.unwrap();
        assert_eq!(store.session("live", 1_500).await.unwrap().map(|s| s.expires_at), Some(2_000));
        assert_eq!(store.session("old", 1_500).await.unwrap(), None, "an expired session must not be found");
        assert_eq!(store.session("missing", 0).await.unwrap(), None);
        assert_eq!(store.delete_expired_sessions(1_500).await.unwrap(), 1);
        assert!(store.delete_session("live").await.unwrap());
        assert!(!store.delete_session("live").await.unwrap());
        assert_eq!(store.session("live", 0).await.unwrap(), None);
    }
}
