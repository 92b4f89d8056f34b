//! What a careless client meets at the server's edge, over HTTP against a
//! real `tag-server` process: the scope a `user_ids` run reports, and the
//! bearer scheme in any case.

mod support;

use serde_json::{json, Value};
use support::*;

const ADMIN: &str = "adm-edge-4b9d1c7e2a";
const READER: &str = "rdr-edge-8e3f6a0b5c";

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

/// A server with an admin and a read token, and `extra` flags.
fn with_tokens(extra: &[&str]) -> Served {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        format!("ops:admin:{ADMIN}\nviewer:read:{READER}\n"),
    )
    .unwrap();
    let path = file.path().display().to_string();
    let mut args = vec!["--tokens-file", path.as_str()];
    args.extend_from_slice(extra);
    served(&args)
}

/// GET `path` with `authorization` as the header's whole value: status,
/// `Retry-After` and JSON body.
fn get_as(served: &Served, path: &str, authorization: Option<&str>) -> (u16, Option<u64>, Value) {
    let mut request = client().get(format!("{}{path}", served.server.base));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let response = request.send().unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    (status, retry_after, response.json().unwrap_or(Value::Null))
}

#[test]
fn the_bearer_scheme_is_accepted_in_any_case() {
    let served = with_tokens(&[]);
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let value = format!("{scheme} {READER}");
        let (status, _, body) = get_as(&served, "/api/v1/tags/available", Some(&value));
        assert_eq!(status, 200, "{value}: {body}");
    }
    let basic = format!("Basic {READER}");
    assert_eq!(
        get_as(&served, "/api/v1/tags/available", Some(&basic)).0,
        401
    );
    let glued = format!("bearer{READER}");
    assert_eq!(
        get_as(&served, "/api/v1/tags/available", Some(&glued)).0,
        401
    );
}
