//! The embedded SQLite store, in two files.
//!
//! The store URL's file holds the results ([`results`]: `user_tags` as a
//! view over compact tables, per-tag run state, run outcomes). Tasks and
//! rules live beside it in `<name>.control.db`, so the API's bookkeeping
//! never waits for a run's write. Both are in WAL mode: readers see the last
//! committed state without waiting for a writer. Each run's write opens its
//! own connection; reads of results share a small pool of connections.

mod results;

use super::*;
use crate::model::now_timestamp;
use results::SqliteRunTx;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    results_path: PathBuf,
    control: Mutex<Connection>,
    /// Read connections to the results file, used round-robin.
    reads: Vec<Mutex<Connection>>,
    next_read: AtomicUsize,
}

/// Read connections to the results file.
const READERS: usize = 4;

fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

const CONTROL_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL UNIQUE,
    spec TEXT NOT NULL,
    environment TEXT NOT NULL,
    status TEXT NOT NULL,
    submitted_at TEXT NOT NULL,
    started_at TEXT,
    completed_at TEXT,
    result TEXT,
    error TEXT,
    idempotency_key TEXT UNIQUE,
    request_hash TEXT
);
CREATE INDEX IF NOT EXISTS tasks_status ON tasks(status);
CREATE TABLE IF NOT EXISTS tag_rules (
    tag_id INTEGER NOT NULL,
    version INTEGER NOT NULL,
    rule TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (tag_id, version)
);
CREATE TABLE IF NOT EXISTS tag_owners (
    tag_id INTEGER PRIMARY KEY,
    plugin TEXT NOT NULL,
    recorded_at TEXT NOT NULL
);
";

/// Control files made before attempts were counted and tasks were leased
/// lack these columns.
fn add_task_columns(control: &Connection) -> Result<(), StoreError> {
    for (table, column, kind) in [
        ("tasks", "attempts", "INTEGER NOT NULL DEFAULT 0"),
        ("tasks", "owner", "TEXT"),
        ("tasks", "lease_until", "INTEGER"),
        ("tasks", "cancel_requested", "INTEGER NOT NULL DEFAULT 0"),
        ("tag_rules", "changed_by", "TEXT"),
    ] {
        let present: bool = control
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2)",
                [table, column],
                |r| r.get(0),
            )
            .map_err(db)?;
        if !present {
            control
                .execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))
                .map_err(db)?;
        }
    }
    Ok(())
}

/// Creates the database file readable by its owner only (mode 0600) when
/// it does not exist; SQLite gives its -wal and -shm files the same mode.
fn create_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Database(format!(
            "creating {}: {e}",
            path.display()
        ))),
    }
}

fn connect(path: &Path, results: bool) -> Result<Connection, StoreError> {
    create_private(path)?;
    let conn = Connection::open(path).map_err(db)?;
    conn.busy_timeout(std::time::Duration::from_secs(60))
        .map_err(db)?;
    // 16 KiB pages for the results (only takes effect on a new file, before
    // WAL is set): fewer B-tree splits and page writes per row.
    // FULL: a commit that returned is on disk. The WAL is truncated back to
    // 64 MB after a checkpoint, so a large first run leaves no large file.
    let page = if results {
        "PRAGMA page_size = 16384;"
    } else {
        ""
    };
    conn.execute_batch(&format!(
        "{page} PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA cache_size = -65536; PRAGMA journal_size_limit = 67108864;"
    ))
    .map_err(db)?;
    Ok(conn)
}

fn task_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<TaskRecord, StoreError>> {
    let columns = TaskColumns {
        task_id: row.get("task_id")?,
        spec: row.get("spec")?,
        environment: row.get("environment")?,
        status: row.get("status")?,
        submitted_at: row.get("submitted_at")?,
        started_at: row.get("started_at")?,
        completed_at: row.get("completed_at")?,
        result: row.get("result")?,
        error: row.get("error")?,
        attempts: row.get("attempts")?,
    };
    Ok(columns.decode())
}

fn rule_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RuleVersion> {
    Ok(RuleVersion {
        tag_id: row.get(0)?,
        version: row.get(1)?,
        rule: row.get(2)?,
        created_at: row.get(3)?,
        changed_by: row.get(4)?,
    })
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Database(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let control = connect(&SqliteStore::control_path(path), false)?;
        control.execute_batch(CONTROL_SCHEMA).map_err(db)?;
        add_task_columns(&control)?;
        let mut results = connect(path, true)?;
        results::prepare(&mut results)?;
        let mut reads = vec![Mutex::new(results)];
        for _ in 1..READERS {
            reads.push(Mutex::new(connect(path, true)?));
        }
        Ok(SqliteStore {
            results_path: path.to_path_buf(),
            control: Mutex::new(control),
            reads,
            next_read: AtomicUsize::new(0),
        })
    }

    /// Where tasks and rules are kept for a store whose results are at `path`.
    pub fn control_path(path: &Path) -> PathBuf {
        path.with_extension("control.db")
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // A poisoned mutex only means another thread panicked mid-call; the
        // connection itself is still usable (SQLite rolls back open work).
        let conn = self.control.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn)
    }

    fn with_results<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // Round-robin: concurrent readers spread over the pool instead of
        // queueing behind one connection.
        let i = self.next_read.fetch_add(1, Ordering::Relaxed) % self.reads.len();
        let conn = self.reads[i].lock().unwrap_or_else(|p| p.into_inner());
        f(&conn)
    }

    fn query_tasks(
        &self,
        sql: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<TaskRecord>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(sql).map_err(db)?;
            let rows = stmt.query_map(args, task_from_row).map_err(db)?;
            rows.map(|r| r.map_err(db)?).collect()
        })
    }
}

impl Store for SqliteStore {
    fn ping(&self) -> Result<(), StoreError> {
        self.with(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(db))
    }

    fn insert_task(
        &self,
        task: &TaskRecord,
        idempotency: Option<(&str, &str)>,
    ) -> Result<(), StoreError> {
        let spec =
            serde_json::to_string(&task.spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.with(|c| {
            c.execute(
                "INSERT INTO tasks (task_id, spec, environment, status, submitted_at, idempotency_key, request_hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    task.task_id,
                    spec,
                    task.environment,
                    task.status.as_str(),
                    task.submitted_at,
                    idempotency.map(|i| i.0),
                    idempotency.map(|i| i.1)
                ],
            )
            .map_err(db)?;
            Ok(())
        })
    }

    fn find_idempotent(&self, key: &str) -> Result<Option<(String, String)>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT task_id, request_hash FROM tasks WHERE idempotency_key = ?1",
                [key],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                    ))
                },
            )
            .optional()
            .map_err(db)
        })
    }

    fn update_task(&self, task: &TaskRecord) -> Result<(), StoreError> {
        let result = task.result.as_ref().map(crate::model::RunReport::encode);
        self.with(|c| {
            c.execute(
                "UPDATE tasks SET status = ?2, started_at = ?3, completed_at = ?4, result = ?5, error = ?6, attempts = ?7 WHERE task_id = ?1",
                params![task.task_id, task.status.as_str(), task.started_at, task.completed_at, result, task.error, task.attempts],
            )
            .map_err(db)?;
            Ok(())
        })
    }

    fn get_task(&self, task_id: &str) -> Result<Option<TaskRecord>, StoreError> {
        Ok(self
            .query_tasks("SELECT * FROM tasks WHERE task_id = ?1", &[&task_id])?
            .pop())
    }

    fn list_tasks(
        &self,
        status: Option<TaskStatus>,
        limit: usize,
        offset: usize,
    ) -> Result<(Vec<TaskRecord>, usize), StoreError> {
        let status = status.map(|s| s.as_str());
        let (limit, offset) = (limit as i64, offset as i64);
        let tasks = self.query_tasks(
            "SELECT * FROM tasks WHERE ?1 IS NULL OR status = ?1 ORDER BY seq DESC LIMIT ?2 OFFSET ?3",
            &[&status, &limit, &offset],
        )?;
        let total = self.with(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM tasks WHERE ?1 IS NULL OR status = ?1",
                [&status],
                |r| r.get::<_, i64>(0),
            )
            .map_err(db)
        })?;
        Ok((tasks, total as usize))
    }

    fn task_history(&self, limit: usize) -> Result<Vec<TaskRecord>, StoreError> {
        self.query_tasks(
            "SELECT task_id, CASE WHEN json_type(spec, '$.user_ids') = 'array' \
             THEN json_set(spec, '$.user_ids', json('[]')) ELSE spec END AS spec, \
             environment, status, submitted_at, started_at, completed_at, result, error, attempts \
             FROM tasks ORDER BY seq DESC LIMIT ?1",
            &[&(limit as i64)],
        )
    }

    fn claimable_tasks(&self, now: i64) -> Result<Vec<TaskRecord>, StoreError> {
        self.query_tasks(
            &format!("SELECT * FROM tasks WHERE {CLAIMABLE_SQL}"),
            &[&now],
        )
    }

    fn claim_task(
        &self,
        task_id: &str,
        owner: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Option<TaskRecord>, StoreError> {
        let claimed = self.with(|c| {
            c.execute(
                CLAIM_SQL,
                params![owner, now_timestamp(), lease_until, task_id, now],
            )
            .map_err(db)
        })?;
        if claimed == 1 {
            self.get_task(task_id)
        } else {
            Ok(None)
        }
    }

    fn renew_leases(
        &self,
        owner: &str,
        task_ids: &[String],
        lease_until: i64,
    ) -> Result<Vec<String>, StoreError> {
        self.with(|c| {
            for id in task_ids {
                c.execute(RENEW_SQL, params![lease_until, id, owner])
                    .map_err(db)?;
            }
            let mut stmt = c.prepare_cached(CANCEL_REQUESTED_SQL).map_err(db)?;
            let ids = stmt.query_map([owner], |r| r.get(0)).map_err(db)?;
            ids.collect::<Result<_, _>>().map_err(db)
        })
    }

    fn cancel_task(&self, task_id: &str) -> Result<CancelState, StoreError> {
        cancel_with(
            task_id,
            |sql, args| {
                let args: Vec<&dyn rusqlite::ToSql> =
                    args.iter().map(|a| a as &dyn rusqlite::ToSql).collect();
                self.with(|c| {
                    c.execute(sql, args.as_slice())
                        .map(|n| n as u64)
                        .map_err(db)
                })
            },
            || Ok(self.get_task(task_id)?.map(|t| t.status)),
        )
    }

    fn purge_finished(&self, before: &str) -> Result<usize, StoreError> {
        let purged = self.with(|c| c.execute(PURGE_TASKS_SQL, [before]).map_err(db))?;
        // The results file is written by runs' own connections: a short one here.
        connect(&self.results_path, true)?
            .execute(PURGE_OUTCOMES_SQL, [before])
            .map_err(db)?;
        Ok(purged)
    }

    fn task_counts(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        self.with(|c| {
            let mut stmt = c
                .prepare_cached("SELECT status, COUNT(*) FROM tasks GROUP BY status")
                .map_err(db)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
                })
                .map_err(db)?;
            rows.collect::<Result<_, _>>().map_err(db)
        })
    }

    fn current_rule(&self, tag_id: u32) -> Result<Option<RuleVersion>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT tag_id, version, rule, created_at, changed_by FROM tag_rules WHERE tag_id = ?1 ORDER BY version DESC LIMIT 1",
                [tag_id],
                rule_from_row,
            )
            .optional()
            .map_err(db)
        })
    }

    fn rule_history(&self, tag_id: u32) -> Result<Vec<RuleVersion>, StoreError> {
        self.with(|c| {
            let mut stmt = c
                .prepare_cached("SELECT tag_id, version, rule, created_at, changed_by FROM tag_rules WHERE tag_id = ?1 ORDER BY version")
                .map_err(db)?;
            let rows = stmt.query_map([tag_id], rule_from_row).map_err(db)?;
            rows.collect::<Result<_, _>>().map_err(db)
        })
    }

    fn save_rule(
        &self,
        tag_id: u32,
        rule: &str,
        changed_by: &str,
    ) -> Result<RuleVersion, StoreError> {
        let now = now_timestamp();
        self.with(|c| {
            let version: i64 = c
                .query_row(
                    "INSERT INTO tag_rules (tag_id, version, rule, created_at, changed_by)
                     SELECT ?1, COALESCE(MAX(version), 0) + 1, ?2, ?3, ?4 FROM tag_rules WHERE tag_id = ?1
                     RETURNING version",
                    params![tag_id, rule, now, changed_by],
                    |r| r.get(0),
                )
                .map_err(db)?;
            Ok(RuleVersion {
                tag_id,
                version,
                rule: rule.to_string(),
                created_at: now,
                changed_by: Some(changed_by.to_string()),
            })
        })
    }

    fn seed_rule(&self, tag_id: u32, rule: &str) -> Result<RuleVersion, StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT OR IGNORE INTO tag_rules (tag_id, version, rule, created_at)
                 SELECT ?1, 1, ?2, ?3 WHERE NOT EXISTS (SELECT 1 FROM tag_rules WHERE tag_id = ?1)",
                params![tag_id, rule, now_timestamp()],
            )
            .map_err(db)?;
            Ok(())
        })?;
        self.current_rule(tag_id)?
            .ok_or_else(|| StoreError::Database(format!("rule of tag {tag_id} vanished")))
    }

    fn tag_owners(&self) -> Result<HashMap<u32, String>, StoreError> {
        self.with(|c| {
            let mut stmt = c
                .prepare("SELECT tag_id, plugin FROM tag_owners")
                .map_err(db)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, u32>(0)?, r.get::<_, String>(1)?)))
                .map_err(db)?;
            rows.collect::<Result<_, _>>().map_err(db)
        })
    }

    fn record_tag_owners(&self, claims: &[(u32, String)]) -> Result<(), StoreError> {
        let now = now_timestamp();
        self.with(|c| {
            for (tag_id, plugin) in claims {
                c.execute(
                    "INSERT OR IGNORE INTO tag_owners (tag_id, plugin, recorded_at) VALUES (?1, ?2, ?3)",
                    params![tag_id, plugin, now],
                )
                .map_err(db)?;
            }
            Ok(())
        })
    }

    fn set_tag_owner(&self, tag_id: u32, plugin: &str) -> Result<Option<String>, StoreError> {
        let previous = self.tag_owners()?.remove(&tag_id);
        self.with(|c| {
            c.execute(
                "INSERT INTO tag_owners (tag_id, plugin, recorded_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (tag_id) DO UPDATE SET plugin = excluded.plugin, recorded_at = excluded.recorded_at",
                params![tag_id, plugin, now_timestamp()],
            )
            .map_err(db)?;
            Ok(())
        })?;
        Ok(previous)
    }

    fn tag_states(&self) -> Result<HashMap<u32, TagState>, StoreError> {
        self.with_results(|c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT tag_id, rule_version, watermarks, had_full_run FROM tag_state",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, u32>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)? != 0,
                    ))
                })
                .map_err(db)?;
            let mut states = HashMap::new();
            for row in rows {
                let (tag_id, rule_version, watermarks, had_full_run) = row.map_err(db)?;
                let watermarks = serde_json::from_str(&watermarks)
                    .map_err(|e| StoreError::Corrupt(format!("watermarks of tag {tag_id}: {e}")))?;
                states.insert(
                    tag_id,
                    TagState {
                        tag_id,
                        rule_version,
                        watermarks,
                        had_full_run,
                    },
                );
            }
            Ok(states)
        })
    }

    fn begin_run(&self, start: &RunStart) -> Result<Box<dyn RunTx + '_>, StoreError> {
        Ok(Box::new(SqliteRunTx::begin(&self.results_path, start)?))
    }

    fn run_outcome(&self, task_id: &str) -> Result<Option<crate::model::RunReport>, StoreError> {
        let text: Option<String> = self.with_results(|c| {
            c.query_row(
                "SELECT result FROM run_outcomes WHERE task_id = ?1",
                [task_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)
        })?;
        text.map(|t| {
            serde_json::from_str(&t)
                .map_err(|e| StoreError::Corrupt(format!("outcome of task {task_id}: {e}")))
        })
        .transpose()
    }

    fn user_tags(&self, user_id: &str) -> Result<Option<UserTagRow>, StoreError> {
        self.with_results(|c| {
            let row = c
                .query_row(
                    "SELECT user_id, tag_ids, tag_details, created_time, updated_time FROM user_tags WHERE user_id = ?1",
                    [user_id],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .optional()
                .map_err(db)?;
            row.map(|(user_id, ids, details, created_time, updated_time)| {
                Ok(UserTagRow { user_id, tag_ids: parse_tag_ids(&ids)?, details, created_time, updated_time })
            })
            .transpose()
        })
    }

    fn users_with_tag(
        &self,
        tag_id: u32,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Vec<String>, StoreError> {
        self.with_results(|c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT user_id FROM user_tag_sets, json_each(user_tag_sets.tag_ids)
                     WHERE json_each.value = ?1 AND (?2 IS NULL OR user_id > ?2) ORDER BY user_id LIMIT ?3",
                )
                .map_err(db)?;
            let rows = stmt.query_map(params![tag_id, cursor, limit as i64], |r| r.get(0)).map_err(db)?;
            rows.collect::<Result<_, _>>().map_err(db)
        })
    }
}
