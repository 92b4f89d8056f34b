//! The server's edge against careless and hostile clients, over HTTP on a
//! real server: failed authentications throttled per address, the bearer
//! scheme in any case, trigger bodies with unknown keys, bounded error
//! echoes, the JSON answers to over-long URIs and over-large headers, and
//! the scope a `user_ids` run reports.

mod support;

use serde_json::{json, Value};
use support::*;

const ADMIN: &str = "adm-edge-4b9d1c7e2a";
const READER: &str = "rdr-edge-8e3f6a0b5c";
const ALL: [u32; 8] = [1, 2, 3, 4, 5, 6, 7, 8];

/// A `tag-server` process over sample data with `extra` flags, and the
/// directories it needs (kept alive with it).
struct Served {
    server: ServerProcess,
    _dirs: Vec<tempfile::TempDir>,
}

impl Served {
    /// POST `body` as JSON: status and JSON body.
    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = client()
            .post(format!("{}{path}", self.server.base))
            .json(body)
            .send()
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().unwrap_or(Value::Null))
    }

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
    get_from(&client(), served, path, authorization)
}

/// [`get_as`] with `client` (one bound to another local address, say).
fn get_from(
    client: &reqwest::blocking::Client,
    served: &Served,
    path: &str,
    authorization: Option<&str>,
) -> (u16, Option<u64>, Value) {
    let mut request = client.get(format!("{}{path}", served.server.base));
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

#[test]
fn a_trigger_body_with_unknown_keys_is_refused_naming_the_nearest_key() {
    let server = &served(&[]);
    let cases = [
        (
            json!({"tag_ids": [2], "userids": ["user_000001"]}),
            "unknown key userids, did you mean user_ids?",
        ),
        (
            json!({"tag_ids": [2], "mdoe": "incremental"}),
            "unknown key mdoe, did you mean mode?",
        ),
        (
            json!({"tag_ids": [2], "mode": "full", "colour": "red"}),
            "unknown key colour (a trigger body takes tag_ids, user_ids, mode, priority, as_of)",
        ),
    ];
    for (body, expected) in cases {
        let (status, reply) = server.post("/api/v1/tags/trigger", &body);
        assert_eq!((status, &reply["success"]), (400, &json!(false)), "{reply}");
        let error = reply["error"].as_str().unwrap();
        assert!(error.contains(expected), "{body}: {error}");
        assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (status, _, list) = get_as(server, "/api/v1/tasks", None);
    assert_eq!(
        (status, &list["total"]),
        (200, &json!(0)),
        "nothing ran: {list}"
    );
    // The keys the seed's clients send are all known.
    let body = json!({"tag_ids": [1, 2], "user_ids": ["user_000001"], "mode": "full",
        "priority": "low", "as_of": "2025-01-15"});
    assert_eq!(server.post("/api/v1/tags/trigger", &body).0, 202);
}

#[test]
fn an_error_echoes_at_most_twenty_ids_and_a_clipped_value() {
    let server = &served(&[]);
    let ids: Vec<u32> = (100..1_000_100).collect();
    let body = json!({ "tag_ids": ids }).to_string();
    assert!(body.len() < 8 << 20, "within the default body limit");
    let response = client()
        .post(format!("{}/api/v1/tags/trigger", server.server.base))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let text = response.text().unwrap();
    assert!(text.len() < 2048, "{} bytes: {}", text.len(), &text[..200]);
    let reply: Value = serde_json::from_str(&text).unwrap();
    let first: Vec<String> = (100..120).map(|i| i.to_string()).collect();
    let listed = format!("[{}, … and 999980 more]", first.join(", "));
    assert_eq!(reply["error"], format!("Invalid tag_ids: {listed}"));
    assert_eq!(reply["message"], format!("无效的标签ID: {listed}"));
    assert_eq!(reply["available_tag_ids"], json!(ALL));

    // A long value quoted back is clipped too.
    for field in ["mode", "priority", "as_of"] {
        let mut body = json!({"tag_ids": [1]});
        body[field] = json!("x".repeat(1_000_000));
        let (status, reply) = server.post("/api/v1/tags/trigger", &body);
        assert_eq!(status, 400, "{field}");
        let error = reply["error"].as_str().unwrap();
        assert!(
            error.len() < 400 && error.contains("(1000000 characters)"),
            "{field}: {error}"
        );
    }
    let body = json!({"tag_ids": [1], "user_ids": [{"a": "y".repeat(1_000_000)}]});
    let (status, reply) = server.post("/api/v1/tags/trigger", &body);
    assert_eq!(status, 400);
    assert!(reply.to_string().len() < 1024, "{reply}");
    // So is a rule's value, and an id in the path.
    let rule =
        json!({"field": "cash_balance", "operator": ">=", "value": {"a": "y".repeat(1_000_000)}});
    let response = client()
        .put(format!("{}/api/v1/tags/1/rule", server.server.base))
        .json(&rule)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let text = response.text().unwrap();
    assert!(
        text.len() < 1024 && text.contains("characters)"),
        "{}",
        &text[..200.min(text.len())]
    );
    let id = "z".repeat(12_000);
    for path in [
        format!("/api/v1/tasks/{id}/status"),
        format!("/api/v1/users/{id}/tags"),
        format!("/api/v1/no/{id}"),
    ] {
        let (status, _, reply) = get_as(server, &path, None);
        assert_eq!(status, 404, "{reply}");
        assert!(reply.to_string().len() < 1024, "{reply}");
    }
}

#[test]
fn over_long_uris_and_over_large_headers_get_the_seeds_json_errors() {
    let served = served(&[]);
    let base = &served.server.base;
    let call = |query: usize, header: usize| {
        let response = client()
            .get(format!(
                "{base}/api/v1/tags/available?q={}",
                "a".repeat(query)
            ))
            .header("x-padding", "b".repeat(header))
            .send()
            .unwrap();
        let status = response.status().as_u16();
        let has_id = response.headers().contains_key("x-request-id");
        let text = response.text().unwrap();
        (
            status,
            has_id,
            serde_json::from_str::<Value>(&text).unwrap_or(json!(text)),
        )
    };
    // Under the limits: answered.
    assert_eq!(call(12_000, 50_000).0, 200);
    for (query, header, status, error) in [
        (20_000, 10, 414, "request URI longer than 16384 bytes"),
        (60_000, 10, 414, "request URI longer than 16384 bytes"),
        (
            10,
            70_000,
            431,
            "request header fields larger than 65536 bytes in all",
        ),
        (
            10,
            300_000,
            431,
            "request header fields larger than 65536 bytes in all",
        ),
    ] {
        let (got, has_id, body) = call(query, header);
        assert_eq!(got, status, "{query} {header}: {body}");
        assert!(has_id, "{query} {header}");
        assert_eq!(body["success"], false, "{body}");
        assert_eq!(body["error"], error, "{body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // The console's pages are behind the same limits.
    let response = client()
        .get(format!("{base}/tasks?q={}", "c".repeat(20_000)))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 414);
    assert_eq!(response.json::<Value>().unwrap()["success"], false);
}

/// A console sign-in with `token`: status, `Retry-After`, whether a session
/// cookie was set, and the JSON body.
fn sign_in(served: &Served, token: &str) -> (u16, Option<String>, bool, Value) {
    let response = client()
        .post(format!("{}/console/session", served.server.base))
        .json(&json!({ "token": token }))
        .send()
        .unwrap();
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (retry_after, cookie) = (header("retry-after"), header("set-cookie"));
    let cookie = cookie.is_some_and(|c| c.starts_with("tag_session="));
    (
        status,
        retry_after,
        cookie,
        response.json().unwrap_or(Value::Null),
    )
}

#[test]
fn failed_authentications_are_throttled_per_address_and_other_addresses_still_pass() {
    let served = with_tokens(&["--auth-failure-burst", "3"]);
    let wrong = Some("Bearer wrong-token-0000000000");
    let admin = format!("Bearer {ADMIN}");
    for _ in 0..3 {
        let (status, retry_after, body) = get_as(&served, "/api/v1/tasks", wrong);
        assert_eq!((status, retry_after), (401, None), "{body}");
    }
    let (status, retry_after, body) = get_as(&served, "/api/v1/tasks", wrong);
    assert_eq!(status, 429, "{body}");
    assert!(
        retry_after.is_some_and(|s| (1..=6).contains(&s)),
        "{retry_after:?}"
    );
    assert_eq!(body["success"], false, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("too many failed authentications"),
        "{body}"
    );
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    // While the address is blocked even the right token gets 429, so a
    // guesser cannot tell the right one from the wrong ones.
    let (status, blocked_for, body) = get_as(&served, "/api/v1/tasks", Some(&admin));
    assert_eq!(status, 429, "{body}");
    let (status, _, cookie, body) = sign_in(&served, READER);
    assert_eq!((status, cookie), (429, false), "{body}");
    // Another address is not held back.
    let elsewhere = reqwest::blocking::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    for _ in 0..5 {
        let (status, _, body) = get_from(&elsewhere, &served, "/api/v1/tasks", Some(&admin));
        assert_eq!(status, 200, "{body}");
    }
    // No token guesses nothing: a plain 401 from an address not blocked.
    assert_eq!(get_from(&elsewhere, &served, "/api/v1/tasks", None).0, 401);
    // Once Retry-After has passed, the right token passes again.
    std::thread::sleep(std::time::Duration::from_secs(blocked_for.unwrap()));
    let (status, _, body) = get_as(&served, "/api/v1/tasks", Some(&admin));
    assert_eq!(status, 200, "{body}");
    // Wrong console sign-ins count against the address too: the bucket
    // refilled one failure, which this one spends; the next is 429.
    assert_eq!(sign_in(&served, "wrong-token-0000000000").0, 401);
    let (status, retry_after, cookie, body) = sign_in(&served, "wrong-token-0000000000");
    assert_eq!((status, cookie), (429, false), "{body}");
    assert!(retry_after.is_some(), "{body}");
    assert_eq!(body["success"], false, "{body}");

    // Turned off, every wrong token is a 401.
    let open = with_tokens(&["--auth-failure-burst", "0"]);
    for _ in 0..30 {
        assert_eq!(get_as(&open, "/api/v1/tasks", wrong).0, 401);
    }
    for _ in 0..15 {
        assert_eq!(sign_in(&open, "wrong-token-0000000000").0, 401);
    }
}
