//! Versioned migrations: each runs once, in order, inside a transaction; a
//! database migrated by a newer tag-server is refused.

use super::{db, StoreError};
use ::postgres::Client;

/// The migrations, version 1 first. Append only: a released one never changes.
const MIGRATIONS: &[&str] = &[
    // 1: everything of a deployment in one database.
    concat!(
        "CREATE TABLE tasks (seq BIGSERIAL PRIMARY KEY,",
        crate::store::sql::task_text_columns!(),
        r#");
CREATE INDEX tasks_status ON tasks (status);
CREATE TABLE tag_rules (
    tag_id BIGINT NOT NULL,
    version BIGINT NOT NULL,
    rule TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (tag_id, version)
);
CREATE TABLE tag_state (
    tag_id BIGINT PRIMARY KEY,
    rule_version BIGINT NOT NULL,
    watermarks TEXT NOT NULL,
    had_full_run BOOLEAN NOT NULL
);
CREATE TABLE tag_grants (
    grant_id INTEGER GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tag_id BIGINT NOT NULL,
    detail JSONB NOT NULL
);
CREATE TABLE user_tag_sets (
    user_id TEXT PRIMARY KEY,
    tag_ids JSONB NOT NULL,
    grants JSONB NOT NULL,
    created_time BIGINT NOT NULL,
    updated_time BIGINT NOT NULL
);
CREATE TABLE run_outcomes (
    task_id TEXT PRIMARY KEY,
    result TEXT NOT NULL,
    committed_at TEXT NOT NULL
);
CREATE VIEW user_tags AS
SELECT s.user_id,
       s.tag_ids,
       (SELECT jsonb_object_agg(g.tag_id::text, g.detail)
          FROM jsonb_array_elements(s.grants) AS j(grant_id)
          JOIN tag_grants AS g ON g.grant_id = (j.grant_id)::integer) AS tag_details,
       to_char(to_timestamp(s.created_time) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS') AS created_time,
       to_char(to_timestamp(s.updated_time) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS') AS updated_time
FROM user_tag_sets AS s;
"#
    ),
    // 2: how often a task was started without finishing cleanly.
    "ALTER TABLE tasks ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;",
    // 3: which process runs a task, and until when its lease holds.
    "ALTER TABLE tasks ADD COLUMN owner TEXT; ALTER TABLE tasks ADD COLUMN lease_until BIGINT;
     ALTER TABLE tasks ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;",
    // 4: which plugin owns each tag id.
    "CREATE TABLE tag_owners (tag_id BIGINT PRIMARY KEY, plugin TEXT NOT NULL, recorded_at TEXT NOT NULL);",
    // 5: who saved each rule version (an API token's name).
    "ALTER TABLE tag_rules ADD COLUMN changed_by TEXT;",
    // 6: the console's sessions (shared by every process on the database).
    crate::store::sql::sessions::sessions_table!(),
    // 7: audiences: the dense user index, per-tag bitmaps, the change feed
    // and saved audiences.
    "ALTER TABLE user_tag_sets ADD COLUMN uidx BIGINT;
    CREATE TABLE retired_users (user_id TEXT PRIMARY KEY, uidx BIGINT NOT NULL);
    CREATE TABLE audience_ids (first_uidx BIGINT PRIMARY KEY, user_count BIGINT NOT NULL, user_ids BYTEA NOT NULL);
    CREATE TABLE audience_meta (id INTEGER PRIMARY KEY, version BIGINT NOT NULL);
    CREATE TABLE tag_bitmaps (tag_id BIGINT PRIMARY KEY, members BYTEA NOT NULL);
    CREATE TABLE tag_changes (
        task_id TEXT NOT NULL,
        tag_id BIGINT NOT NULL,
        committed_at TEXT NOT NULL,
        version BIGINT NOT NULL,
        added BYTEA NOT NULL,
        removed BYTEA NOT NULL,
        PRIMARY KEY (tag_id, task_id)
    );
    CREATE INDEX tag_changes_time ON tag_changes (committed_at);
    CREATE TABLE audiences (
        name TEXT PRIMARY KEY,
        expr TEXT NOT NULL,
        canonical TEXT NOT NULL,
        description TEXT NOT NULL,
        saved_by TEXT,
        saved_at TEXT NOT NULL
    );
    CREATE TABLE audience_counts (
        name TEXT NOT NULL,
        task_id TEXT NOT NULL,
        version BIGINT NOT NULL,
        committed_at TEXT NOT NULL,
        members BIGINT NOT NULL,
        PRIMARY KEY (name, task_id)
    );",
];

/// Applies the migrations the database lacks; refuses a newer database.
pub fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let mut tx = client.transaction().map_err(db)?;
    // One migrator at a time when several servers start together.
    tx.batch_execute(
        "SELECT pg_advisory_xact_lock(7461676573);
         CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)",
    )
    .map_err(db)?;
    let current: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .map_err(db)?
        .get(0);
    crate::store::sql::refuse_newer("database", current.into(), MIGRATIONS.len() as i64)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = i as i32 + 1;
        tx.batch_execute(sql)
            .map_err(|e| StoreError::Database(format!("migration {version}: {e}")))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
            &[&version, &crate::model::now_timestamp()],
        )
        .map_err(db)?;
        tracing::info!(version, "store migrated");
    }
    tx.commit().map_err(db)
}
