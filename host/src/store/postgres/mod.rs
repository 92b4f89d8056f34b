//! The PostgreSQL store: one database holds everything of a deployment
//! (tasks, rules, run state, results, run outcomes), so several tag-server
//! processes can share it.
//!
//! Calls are blocking (the `postgres` crate), made from worker threads and
//! the API's blocking pool, never from async tasks. Connections come from a
//! small pool; each run's write takes one of its own ([`results`]).

mod results;
mod schema;

use super::*;
use crate::model::now_timestamp;
use ::postgres::{Client, NoTls, Row};
use results::PgRunTx;
use std::sync::Mutex;

/// PostgreSQL-backed [`Store`].
pub struct PgStore {
    config: ::postgres::Config,
    /// The URL without its password, for messages.
    shown: String,
    idle: Mutex<Vec<Client>>,
}

/// Idle connections kept for reuse.
const IDLE: usize = 8;

fn db(e: ::postgres::Error) -> StoreError {
    StoreError::Database(message(&e))
}

/// The database's own message when there is one (the client's `Display`
/// says only "db error").
fn message(e: &::postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => match d.detail() {
            Some(detail) => format!("{}: {} ({detail})", d.severity(), d.message()),
            None => format!("{}: {}", d.severity(), d.message()),
        },
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}

/// A connection taken from the pool; it goes back when dropped, unless it
/// broke.
pub struct Pooled<'a> {
    store: &'a PgStore,
    client: Option<Client>,
}

impl std::ops::Deref for Pooled<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("present until dropped")
    }
}

impl std::ops::DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("present until dropped")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take().filter(|c| !c.is_closed()) {
            let mut idle = self.store.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < IDLE {
                idle.push(client);
            }
        }
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Closing a client blocks on its own runtime, which panics on an
        // async thread (where the server's last reference may be dropped).
        let idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|p| p.into_inner()));
        let _ = std::thread::spawn(move || drop(idle)).join();
    }
}

impl PgStore {
    /// Connects to `url` and brings the schema up to date.
    pub fn open(url: &str) -> Result<PgStore, StoreError> {
        let config: ::postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Database(format!("invalid store URL {}: {e}", redact(url))))?;
        let store = PgStore {
            config,
            shown: redact(url),
            idle: Mutex::new(Vec::new()),
        };
        let mut client = store.client()?;
        schema::migrate(&mut client)?;
        drop(client);
        Ok(store)
    }

    /// A connection from the pool, or a new one.
    pub fn client(&self) -> Result<Pooled<'_>, StoreError> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let client = match idle {
            Some(client) => client,
            None => self.config.connect(NoTls).map_err(|e| {
                StoreError::Unreachable(format!(
                    "cannot connect to {}: {}",
                    self.shown,
                    message(&e)
                ))
            })?,
        };
        Ok(Pooled {
            store: self,
            client: Some(client),
        })
    }

    fn query_tasks(
        &self,
        sql: &str,
        args: &[&(dyn ::postgres::types::ToSql + Sync)],
    ) -> Result<Vec<TaskRecord>, StoreError> {
        let rows = self.client()?.query(sql, args).map_err(db)?;
        rows.iter().map(task_from_row).collect()
    }
}

fn task_from_row(row: &Row) -> Result<TaskRecord, StoreError> {
    let get = |name: &str| -> Result<Option<String>, StoreError> { row.try_get(name).map_err(db) };
    TaskColumns {
        task_id: get("task_id")?.unwrap_or_default(),
        spec: get("spec")?.unwrap_or_default(),
        environment: get("environment")?.unwrap_or_default(),
        status: get("status")?.unwrap_or_default(),
        submitted_at: get("submitted_at")?.unwrap_or_default(),
        started_at: get("started_at")?,
        completed_at: get("completed_at")?,
        result: get("result")?,
        error: get("error")?,
        attempts: row.try_get::<_, i32>("attempts").map_err(db)? as i64,
    }
    .decode()
}

fn rule_from_row(row: &Row) -> Result<RuleVersion, StoreError> {
    Ok(RuleVersion {
        tag_id: row.try_get::<_, i64>(0).map_err(db)? as u32,
        version: row.try_get(1).map_err(db)?,
        rule: row.try_get(2).map_err(db)?,
        created_at: row.try_get(3).map_err(db)?,
        changed_by: row.try_get(4).map_err(db)?,
    })
}

const TASK_COLUMNS: &str =
    "task_id, spec, environment, status, submitted_at, started_at, completed_at, result, error, attempts";

impl Store for PgStore {
    fn ping(&self) -> Result<(), StoreError> {
        self.client()?
            .simple_query("SELECT 1")
            .map(|_| ())
            .map_err(db)
    }

    fn insert_task(
        &self,
        task: &TaskRecord,
        idempotency: Option<(&str, &str)>,
    ) -> Result<(), StoreError> {
        let spec =
            serde_json::to_string(&task.spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.client()?
            .execute(
                "INSERT INTO tasks (task_id, spec, environment, status, submitted_at, idempotency_key, request_hash)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[&task.task_id, &spec, &task.environment, &task.status.as_str(), &task.submitted_at,
                  &idempotency.map(|i| i.0), &idempotency.map(|i| i.1)],
            )
            .map(|_| ())
            .map_err(db)
    }

    fn find_idempotent(&self, key: &str) -> Result<Option<(String, String)>, StoreError> {
        let row = self
            .client()?
            .query_opt(
                "SELECT task_id, request_hash FROM tasks WHERE idempotency_key = $1",
                &[&key],
            )
            .map_err(db)?;
        Ok(row.map(|r| (r.get(0), r.get::<_, Option<String>>(1).unwrap_or_default())))
    }

    fn update_task(&self, task: &TaskRecord) -> Result<(), StoreError> {
        let result = task.result.as_ref().map(crate::model::RunReport::encode);
        self.client()?
            .execute(
                "UPDATE tasks SET status = $2, started_at = $3, completed_at = $4, result = $5, error = $6, attempts = $7 WHERE task_id = $1",
                &[&task.task_id, &task.status.as_str(), &task.started_at, &task.completed_at, &result, &task.error, &(task.attempts as i32)],
            )
            .map(|_| ())
            .map_err(db)
    }

    fn get_task(&self, task_id: &str) -> Result<Option<TaskRecord>, StoreError> {
        let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE task_id = $1");
        Ok(self.query_tasks(&sql, &[&task_id])?.pop())
    }

    fn list_tasks(
        &self,
        status: Option<TaskStatus>,
        limit: usize,
        offset: usize,
    ) -> Result<(Vec<TaskRecord>, usize), StoreError> {
        let status = status.map(|s| s.as_str());
        let (limit, offset) = (limit as i64, offset as i64);
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE $1::text IS NULL OR status = $1 ORDER BY seq DESC LIMIT $2 OFFSET $3"
        );
        let tasks = self.query_tasks(&sql, &[&status, &limit, &offset])?;
        let total: i64 = self
            .client()?
            .query_one(
                "SELECT COUNT(*) FROM tasks WHERE $1::text IS NULL OR status = $1",
                &[&status],
            )
            .map_err(db)?
            .get(0);
        Ok((tasks, total as usize))
    }

    fn task_history(&self, limit: usize) -> Result<Vec<TaskRecord>, StoreError> {
        self.query_tasks(
            "SELECT task_id, CASE WHEN jsonb_typeof(spec::jsonb -> 'user_ids') = 'array' \
             THEN jsonb_set(spec::jsonb, '{user_ids}', '[]'::jsonb)::text ELSE spec END AS spec, \
             environment, status, submitted_at, started_at, completed_at, result, error, attempts \
             FROM tasks ORDER BY seq DESC LIMIT $1",
            &[&(limit as i64)],
        )
    }

    fn claimable_tasks(&self, now: i64) -> Result<Vec<TaskRecord>, StoreError> {
        let sql = numbered(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE {CLAIMABLE_SQL}"
        ));
        self.query_tasks(&sql, &[&now])
    }

    fn claim_task(
        &self,
        task_id: &str,
        owner: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Option<TaskRecord>, StoreError> {
        let claimed = self
            .client()?
            .execute(
                &numbered(CLAIM_SQL),
                &[&owner, &now_timestamp(), &lease_until, &task_id, &now],
            )
            .map_err(db)?;
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
        let mut client = self.client()?;
        let renew = numbered(RENEW_SQL);
        for id in task_ids {
            client
                .execute(&renew, &[&lease_until, id, &owner])
                .map_err(db)?;
        }
        let rows = client
            .query(&numbered(CANCEL_REQUESTED_SQL), &[&owner])
            .map_err(db)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn cancel_task(&self, task_id: &str) -> Result<CancelState, StoreError> {
        cancel_with(
            task_id,
            |sql, args| {
                let args: Vec<&(dyn ::postgres::types::ToSql + Sync)> = args
                    .iter()
                    .map(|a| a as &(dyn ::postgres::types::ToSql + Sync))
                    .collect();
                self.client()?.execute(&numbered(sql), &args).map_err(db)
            },
            || Ok(self.get_task(task_id)?.map(|t| t.status)),
        )
    }

    fn purge_finished(&self, before: &str) -> Result<usize, StoreError> {
        let mut client = self.client()?;
        let purged = client
            .execute(&numbered(PURGE_TASKS_SQL), &[&before])
            .map_err(db)?;
        client
            .execute(&numbered(PURGE_OUTCOMES_SQL), &[&before])
            .map_err(db)?;
        Ok(purged as usize)
    }

    fn task_counts(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let rows = self
            .client()?
            .query("SELECT status, COUNT(*) FROM tasks GROUP BY status", &[])
            .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
            .collect())
    }

    fn current_rule(&self, tag_id: u32) -> Result<Option<RuleVersion>, StoreError> {
        let row = self
            .client()?
            .query_opt(
                "SELECT tag_id, version, rule, created_at, changed_by FROM tag_rules WHERE tag_id = $1 ORDER BY version DESC LIMIT 1",
                &[&(tag_id as i64)],
            )
            .map_err(db)?;
        row.as_ref().map(rule_from_row).transpose()
    }

    fn rule_history(&self, tag_id: u32) -> Result<Vec<RuleVersion>, StoreError> {
        let rows = self
            .client()?
            .query(
                "SELECT tag_id, version, rule, created_at, changed_by FROM tag_rules WHERE tag_id = $1 ORDER BY version",
                &[&(tag_id as i64)],
            )
            .map_err(db)?;
        rows.iter().map(rule_from_row).collect()
    }

    fn save_rule(
        &self,
        tag_id: u32,
        rule: &str,
        changed_by: &str,
    ) -> Result<RuleVersion, StoreError> {
        let now = now_timestamp();
        // Two savers of one tag race for the same version number: the
        // primary key makes one of them fail rather than overwrite.
        let row = self
            .client()?
            .query_one(
                "INSERT INTO tag_rules (tag_id, version, rule, created_at, changed_by)
                 SELECT $1, COALESCE(MAX(version), 0) + 1, $2, $3, $4 FROM tag_rules WHERE tag_id = $1
                 RETURNING tag_id, version, rule, created_at, changed_by",
                &[&(tag_id as i64), &rule, &now, &changed_by],
            )
            .map_err(db)?;
        rule_from_row(&row)
    }

    fn seed_rule(&self, tag_id: u32, rule: &str) -> Result<RuleVersion, StoreError> {
        self.client()?
            .execute(
                "INSERT INTO tag_rules (tag_id, version, rule, created_at) VALUES ($1, 1, $2, $3)
                 ON CONFLICT DO NOTHING",
                &[&(tag_id as i64), &rule, &now_timestamp()],
            )
            .map_err(db)?;
        self.current_rule(tag_id)?
            .ok_or_else(|| StoreError::Database(format!("rule of tag {tag_id} vanished")))
    }

    fn tag_owners(&self) -> Result<HashMap<u32, String>, StoreError> {
        let rows = self
            .client()?
            .query("SELECT tag_id, plugin FROM tag_owners", &[])
            .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, i64>(0) as u32, r.get::<_, String>(1)))
            .collect())
    }

    fn record_tag_owners(&self, claims: &[(u32, String)]) -> Result<(), StoreError> {
        let mut client = self.client()?;
        let now = now_timestamp();
        for (tag_id, plugin) in claims {
            client
                .execute(
                    "INSERT INTO tag_owners (tag_id, plugin, recorded_at) VALUES ($1, $2, $3)
                     ON CONFLICT (tag_id) DO NOTHING",
                    &[&(*tag_id as i64), plugin, &now],
                )
                .map_err(db)?;
        }
        Ok(())
    }

    fn set_tag_owner(&self, tag_id: u32, plugin: &str) -> Result<Option<String>, StoreError> {
        let previous = self.tag_owners()?.remove(&tag_id);
        self.client()?
            .execute(
                "INSERT INTO tag_owners (tag_id, plugin, recorded_at) VALUES ($1, $2, $3)
                 ON CONFLICT (tag_id) DO UPDATE SET plugin = EXCLUDED.plugin, recorded_at = EXCLUDED.recorded_at",
                &[&(tag_id as i64), &plugin, &now_timestamp()],
            )
            .map_err(db)?;
        Ok(previous)
    }

    fn tag_states(&self) -> Result<HashMap<u32, TagState>, StoreError> {
        let rows = self
            .client()?
            .query(
                "SELECT tag_id, rule_version, watermarks, had_full_run FROM tag_state",
                &[],
            )
            .map_err(db)?;
        let mut states = HashMap::new();
        for row in rows {
            let tag_id = row.get::<_, i64>(0) as u32;
            let watermarks: String = row.get(2);
            let watermarks = serde_json::from_str(&watermarks)
                .map_err(|e| StoreError::Corrupt(format!("watermarks of tag {tag_id}: {e}")))?;
            states.insert(
                tag_id,
                TagState {
                    tag_id,
                    rule_version: row.get(1),
                    watermarks,
                    had_full_run: row.get(3),
                },
            );
        }
        Ok(states)
    }

    fn begin_run(&self, start: &RunStart) -> Result<Box<dyn RunTx + '_>, StoreError> {
        Ok(Box::new(PgRunTx::begin(self.client()?, start)?))
    }

    fn run_outcome(&self, task_id: &str) -> Result<Option<crate::model::RunReport>, StoreError> {
        let row = self
            .client()?
            .query_opt(
                "SELECT result FROM run_outcomes WHERE task_id = $1",
                &[&task_id],
            )
            .map_err(db)?;
        row.map(|r| {
            serde_json::from_str(r.get(0))
                .map_err(|e| StoreError::Corrupt(format!("outcome of task {task_id}: {e}")))
        })
        .transpose()
    }

    fn user_tags(&self, user_id: &str) -> Result<Option<UserTagRow>, StoreError> {
        let row = self
            .client()?
            .query_opt(
                "SELECT user_id, tag_ids::text, tag_details::text, created_time, updated_time FROM user_tags WHERE user_id = $1",
                &[&user_id],
            )
            .map_err(db)?;
        row.map(|r| {
            Ok(UserTagRow {
                user_id: r.get(0),
                tag_ids: parse_tag_ids(r.get(1))?,
                details: r.get(2),
                created_time: r.get(3),
                updated_time: r.get(4),
            })
        })
        .transpose()
    }

    fn users_with_tag(
        &self,
        tag_id: u32,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Vec<String>, StoreError> {
        let rows = self
            .client()?
            .query(
                "SELECT user_id FROM user_tag_sets WHERE tag_ids @> to_jsonb($1::bigint)
                 AND ($2::text IS NULL OR user_id > $2) ORDER BY user_id LIMIT $3",
                &[&(tag_id as i64), &cursor, &(limit as i64)],
            )
            .map_err(db)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}
