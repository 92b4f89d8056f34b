//! The console's sessions on every backend: one table, keyed by the
//! digest of the session id.

use super::{Conn, Row, SqlStore};
use crate::store::{ConsoleSession, SessionStore, StoreError};

/// The sessions table as every backend creates it (MySQL appends its
/// character set; SQLite runs it at every open, the others as a migration).
/// A released migration: never change it; change the table with a new one.
macro_rules! sessions_table {
    () => {
        "CREATE TABLE IF NOT EXISTS console_sessions (
    id_digest VARCHAR(64) NOT NULL PRIMARY KEY,
    token_name VARCHAR(255) NOT NULL,
    role VARCHAR(16) NOT NULL,
    binding VARCHAR(64) NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
)"
    };
}
pub(crate) use sessions_table;

/// The columns [`session_of`] decodes, in its order.
const COLUMNS: &str = "id_digest, token_name, role, binding, created_at, expires_at";

fn session_of(row: &Row) -> Result<ConsoleSession, StoreError> {
    Ok(ConsoleSession {
        id_digest: row.text(0)?,
        token_name: row.text(1)?,
        role: row.text(2)?,
        binding: row.text(3)?,
        created_at: row.int(4)?,
        expires_at: row.int(5)?,
    })
}

fn delete(c: &mut dyn Conn, id_digest: &str) -> Result<bool, StoreError> {
    let gone = c.execute(
        "DELETE FROM console_sessions WHERE id_digest = ?",
        &[id_digest.into()],
    )?;
    Ok(gone > 0)
}

impl<B: SqlStore> SessionStore for B {
    fn create_session(&self, session: &ConsoleSession) -> Result<(), StoreError> {
        let sql = format!("INSERT INTO console_sessions ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)");
        self.control(|c| {
            c.execute(
                &sql,
                &[
                    session.id_digest.as_str().into(),
                    session.token_name.as_str().into(),
                    session.role.as_str().into(),
                    session.binding.as_str().into(),
                    session.created_at.into(),
                    session.expires_at.into(),
                ],
            )
            .map(drop)
        })
    }

    fn find_session(
        &self,
        id_digest: &str,
        now: i64,
    ) -> Result<Option<ConsoleSession>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM console_sessions WHERE id_digest = ?");
        self.control(|c| {
            let Some(session) = c
                .query_first(&sql, &[id_digest.into()])?
                .as_ref()
                .map(session_of)
                .transpose()?
            else {
                return Ok(None);
            };
            if session.expires_at <= now {
                delete(c, id_digest)?;
                return Ok(None);
            }
            Ok(Some(session))
        })
    }

    fn delete_session(&self, id_digest: &str) -> Result<bool, StoreError> {
        self.control(|c| delete(c, id_digest))
    }

    fn purge_sessions(&self, now: i64) -> Result<usize, StoreError> {
        let gone = self.control(|c| {
            c.execute(
                "DELETE FROM console_sessions WHERE expires_at <= ?",
                &[now.into()],
            )
        })?;
        Ok(gone as usize)
    }
}
