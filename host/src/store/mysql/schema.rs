//! Versioned migrations for MySQL/MariaDB; a newer database is refused.
//! The first start on a database that holds the old system's `user_tags`
//! table adopts it ([`adopt`]) instead of creating the view of that name.

use super::adopt::{self, Mirror};
use super::{db, StoreError};
use ::mysql::prelude::Queryable;
use ::mysql::PooledConn;

/// The original table's five columns from the compact tables, times as
/// `YYYY-MM-DDTHH:MM:SS` UTC built without the session time zone.
macro_rules! user_tags_select {
    () => {
        concat!(
            "SELECT s.user_id AS user_id,
            s.tag_ids AS tag_ids,
            ",
            tag_details_of!("s.grants"),
            " AS tag_details,
            DATE_FORMAT(TIMESTAMPADD(SECOND, s.created_time, '1970-01-01 00:00:00'), '%Y-%m-%dT%H:%i:%s') AS created_time,
            DATE_FORMAT(TIMESTAMPADD(SECOND, s.updated_time, '1970-01-01 00:00:00'), '%Y-%m-%dT%H:%i:%s') AS updated_time
     FROM user_tag_sets AS s"
        )
    };
}

/// `user_tags` as a view, where no earlier table holds the name.
const USER_TAGS_VIEW: &str = concat!("CREATE VIEW user_tags AS\n     ", user_tags_select!());

/// The migrations, version 1 first. Append only. Text is utf8mb4; user ids
/// compare byte for byte (`utf8mb4_bin`): `User1` is not `user1`.
const MIGRATIONS: &[&[&str]] = &[
    &[
        "CREATE TABLE tasks (
        seq BIGINT AUTO_INCREMENT PRIMARY KEY,
        task_id VARCHAR(64) NOT NULL UNIQUE,
        spec LONGTEXT NOT NULL,
        environment VARCHAR(32) NOT NULL,
        status VARCHAR(16) NOT NULL,
        submitted_at VARCHAR(32) NOT NULL,
        started_at VARCHAR(32),
        completed_at VARCHAR(32),
        result LONGTEXT,
        error LONGTEXT,
        idempotency_key VARCHAR(255) UNIQUE,
        request_hash LONGTEXT,
        INDEX tasks_status (status)
    ) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
        "CREATE TABLE tag_rules (
        tag_id BIGINT NOT NULL,
        version BIGINT NOT NULL,
        rule LONGTEXT NOT NULL,
        created_at VARCHAR(32) NOT NULL,
        PRIMARY KEY (tag_id, version)
    ) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
        "CREATE TABLE tag_state (
        tag_id BIGINT PRIMARY KEY,
        rule_version BIGINT NOT NULL,
        watermarks LONGTEXT NOT NULL,
        had_full_run BOOLEAN NOT NULL
    ) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
        "CREATE TABLE tag_grants (
        grant_id INT AUTO_INCREMENT PRIMARY KEY,
        tag_id BIGINT NOT NULL,
        detail JSON NOT NULL
    ) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
        "CREATE TABLE user_tag_sets (
        user_id VARCHAR(255) NOT NULL PRIMARY KEY,
        tag_ids JSON NOT NULL,
        grants JSON NOT NULL,
        created_time BIGINT NOT NULL,
        updated_time BIGINT NOT NULL
    ) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
        "CREATE TABLE run_outcomes (
        task_id VARCHAR(64) PRIMARY KEY,
        result LONGTEXT NOT NULL,
        committed_at VARCHAR(32) NOT NULL
    ) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
        // One row that a run's transaction locks: writers take turns, readers
        // of user_tag_sets never wait (InnoDB reads a snapshot).
        "CREATE TABLE run_lock (id INT PRIMARY KEY) ENGINE = InnoDB",
        "INSERT INTO run_lock VALUES (1)",
        USER_TAGS_VIEW,
    ],
    &[
        // 2: how often a task was started without finishing cleanly.
        "ALTER TABLE tasks ADD COLUMN attempts INT NOT NULL DEFAULT 0",
    ],
    &[
        // 3: which process runs a task, and until when its lease holds.
        "ALTER TABLE tasks ADD COLUMN owner VARCHAR(64)",
        "ALTER TABLE tasks ADD COLUMN lease_until BIGINT",
        "ALTER TABLE tasks ADD COLUMN cancel_requested INT NOT NULL DEFAULT 0",
    ],
    &[
        // 4: which plugin owns each tag id.
        "CREATE TABLE tag_owners (
        tag_id BIGINT PRIMARY KEY,
        plugin VARCHAR(255) NOT NULL,
        recorded_at VARCHAR(32) NOT NULL
    ) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
    ],
    &[
        // 5: who saved each rule version (an API token's name).
        "ALTER TABLE tag_rules ADD COLUMN changed_by VARCHAR(255)",
    ],
    &[
        // 6: tables adopted from the old system (`user_tags` kept as a table),
        // and the view tag-server reads its own rows through, whatever
        // `user_tags` is.
        "CREATE TABLE adopted_tables (
        table_name VARCHAR(64) PRIMARY KEY,
        adopted_at VARCHAR(32) NOT NULL,
        rows_adopted BIGINT NOT NULL
    ) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
        concat!("CREATE VIEW user_tag_rows AS ", user_tags_select!()),
    ],
    &[
        // 7: the console's sessions (shared by every process on the database).
        concat!(
            crate::store::sql::sessions::sessions_table!(),
            " CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        ),
    ],
    &[
        // 8: audiences: the dense user index, per-tag bitmaps, the change
        // feed and saved audiences.
        "ALTER TABLE user_tag_sets ADD COLUMN uidx BIGINT",
        "CREATE TABLE retired_users (
        user_id VARCHAR(255) NOT NULL PRIMARY KEY,
        uidx BIGINT NOT NULL
    ) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
        "CREATE TABLE audience_ids (
        first_uidx BIGINT PRIMARY KEY,
        user_count BIGINT NOT NULL,
        user_ids LONGBLOB NOT NULL
    )",
        "CREATE TABLE audience_meta (id INT PRIMARY KEY, version BIGINT NOT NULL) ENGINE = InnoDB",
        "CREATE TABLE tag_bitmaps (tag_id BIGINT PRIMARY KEY, members LONGBLOB NOT NULL)",
        "CREATE TABLE tag_changes (
        task_id VARCHAR(64) NOT NULL,
        tag_id BIGINT NOT NULL,
        committed_at VARCHAR(32) NOT NULL,
        version BIGINT NOT NULL,
        added LONGBLOB NOT NULL,
        removed LONGBLOB NOT NULL,
        PRIMARY KEY (tag_id, task_id),
        INDEX tag_changes_time (committed_at)
    ) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
        "CREATE TABLE audiences (
        name VARCHAR(255) PRIMARY KEY,
        expr LONGTEXT NOT NULL,
        canonical LONGTEXT NOT NULL,
        description LONGTEXT NOT NULL,
        saved_by VARCHAR(255),
        saved_at VARCHAR(32) NOT NULL
    ) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
        "CREATE TABLE audience_counts (
        name VARCHAR(255) NOT NULL,
        task_id VARCHAR(64) NOT NULL,
        version BIGINT NOT NULL,
        committed_at VARCHAR(32) NOT NULL,
        members BIGINT NOT NULL,
        PRIMARY KEY (name, task_id)
    ) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
    ],
];

/// Applies the migrations the database lacks (refusing a newer database)
/// and adopts an old `user_tags` table; that table, if runs write it.
/// DDL commits on its own in MySQL, so a named lock keeps two starting
/// servers from migrating at once.
pub fn migrate(conn: &mut PooledConn) -> Result<Option<Mirror>, StoreError> {
    conn.query_drop("SELECT GET_LOCK('tag_server_migrate', 60)")
        .map_err(db)?;
    let outcome = apply(conn);
    let _ = conn.query_drop("SELECT RELEASE_LOCK('tag_server_migrate')");
    outcome
}

fn apply(conn: &mut PooledConn) -> Result<Option<Mirror>, StoreError> {
    let mut current = None;
    if adopt::table_kind(conn, "schema_migrations")?.is_some() {
        current = conn
            .query_first("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            .map_err(db)?;
    }
    let current: i64 = current.unwrap_or(0);
    crate::store::sql::refuse_newer("database", current, MIGRATIONS.len() as i64)?;
    // Checked before anything is created: a refused database stays as it was.
    let adopting = current == 0 && adopt::before_first_migration(conn, &created_names())?;
    conn.query_drop(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INT PRIMARY KEY, applied_at VARCHAR(32) NOT NULL)",
    )
    .map_err(db)?;
    for (i, statements) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = i as i64 + 1;
        for sql in *statements {
            if adopting && *sql == USER_TAGS_VIEW {
                continue;
            }
            conn.query_drop(*sql)
                .map_err(|e| StoreError::Database(format!("migration {version}: {e}")))?;
        }
        conn.exec_drop(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
            (version, crate::model::now_timestamp()),
        )
        .map_err(db)?;
        tracing::info!(version, "store migrated");
    }
    match adopt::table_kind(conn, "user_tags")?.as_deref() {
        Some("BASE TABLE") => adopt::adopt(conn).map(Some),
        Some(_) => Ok(None),
        // An adopted table dropped or renamed away: the view takes its place.
        None => {
            conn.query_drop(USER_TAGS_VIEW).map_err(db)?;
            tracing::info!("user_tags is tag-server's view again");
            Ok(None)
        }
    }
}

/// The tables and views the migrations create.
fn created_names() -> Vec<&'static str> {
    MIGRATIONS
        .iter()
        .flat_map(|statements| statements.iter())
        .filter_map(|sql| {
            let rest = sql
                .strip_prefix("CREATE TABLE ")
                .or_else(|| sql.strip_prefix("CREATE VIEW "))?;
            rest.split_whitespace().next()
        })
        .collect()
}
