//! What a careless client meets at the server's edge, over HTTP against a
//! real `tag-server` process: the scope a `user_ids` run reports.

mod support;

use serde_json::{json, Value};
use support::*;

/// A `tag-server` process over sample data with `extra` flags, and the
/// directories it needs (kept alive with it).
struct Served {
    server: ServerProcess,
    _dirs: Vec<tempfile::TempDir>,
}

impl Served {
    /// Triggers `body` and waits for the task: its `result` (asserting it
    /// completed).
    fn run(&self, body: Value) -> Value {
        let status = self.server.run(body);
        assert_eq!(status["status"], "completed", "{status}");
        status["result"].clone()
    }
}

fn served(extra: &[&str]) -> Served {
    let data = sample_data(60);
    let plugins = reference_plugins_dir();
    let work = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_in(work.path(), data.path(), plugins.path(), extra);
    Served {
        server,
        _dirs: vec![data, plugins, work],
    }
}

#[test]
fn a_user_ids_run_reports_the_requested_users_as_its_scope() {
    let server = &served(&[]);
    let users = json!(["user_000001", "user_000002", "user_000003"]);
    let result =
        server.run(json!({"tag_ids": [1, 2, 6], "user_ids": users, "as_of": "2025-01-15"}));
    let scopes: Vec<&Value> = result["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["scope"])
        .collect();
    assert_eq!(scopes, [&json!("requested users"); 3], "{result}");
    let result = server.run(json!({"tag_ids": [1], "as_of": "2025-01-15"}));
    assert_eq!(result["tags"][0]["scope"], "all users", "{result}");
}
