//! The API against its own description: `/api/v1/openapi.json` lists every
//! route with its bodies and answers, and schemathesis (from PyPI) fuzzes a
//! real server with it, failing on any 5xx and any answer (status, content
//! type, headers, body) the document does not allow.

mod support;

use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use support::{client, python, reference_plugins_dir, sample_data, ServerProcess};

const ADMIN: &str = "adm-31c4d5e6f7a8b9c0";

/// Every route the server has, as the document must name it.
const ROUTES: [(&str, &str); 25] = [
    ("get", "/health"),
    ("get", "/metrics"),
    ("get", "/api/v1/tags/available"),
    ("get", "/api/v1/tags/{tag_id}/rule"),
    ("put", "/api/v1/tags/{tag_id}/rule"),
    ("get", "/api/v1/tags/{tag_id}/users"),
    ("post", "/api/v1/tags/{tag_id}/owner"),
    ("post", "/api/v1/tags/trigger"),
    ("get", "/api/v1/tasks"),
    ("get", "/api/v1/tasks/{task_id}/status"),
    ("post", "/api/v1/tasks/{task_id}/cancel"),
    ("post", "/api/v1/tasks/{task_id}/retry"),
    ("get", "/api/v1/users/{user_id}/tags"),
    ("get", "/api/v1/system/stats"),
    ("get", "/api/v1/plugins"),
    ("post", "/api/v1/plugins/reload"),
    ("post", "/api/v1/audiences/query"),
    ("get", "/api/v1/audiences/query"),
    ("get", "/api/v1/audiences"),
    ("get", "/api/v1/audiences/{name}"),
    ("put", "/api/v1/audiences/{name}"),
    ("delete", "/api/v1/audiences/{name}"),
    ("get", "/api/v1/audiences/{name}/members"),
    ("get", "/api/v1/tags/overlap"),
    ("get", "/api/v1/tags/{tag_id}/changes"),
];

struct Served {
    server: ServerProcess,
    log: std::path::PathBuf,
    _dirs: Vec<tempfile::TempDir>,
}

/// A real server with an admin token, over sample data.
fn served() -> Served {
    let work = tempfile::tempdir().unwrap();
    let tokens = work.path().join("tokens");
    std::fs::write(&tokens, format!("fuzz:admin:{ADMIN}\n")).unwrap();
    let log = work.path().join("server.log");
    let data = sample_data(500);
    let plugins = reference_plugins_dir();
    let server = ServerProcess::start_in(
        work.path(),
        data.path(),
        plugins.path(),
        // schemathesis sends wrong tokens on purpose, and wants each
        // answered 401, never 429: no throttling of failures here.
        &[
            "--tokens-file",
            tokens.to_str().unwrap(),
            "--auth-failure-burst",
            "0",
        ],
    );
    Served {
        server,
        log,
        _dirs: vec![work, data, plugins],
    }
}

fn get(served: &Served, path: &str) -> (u16, Value) {
    let response = client()
        .get(format!("{}{path}", served.server.base))
        .bearer_auth(ADMIN)
        .send()
        .unwrap();
    (
        response.status().as_u16(),
        response.json().unwrap_or(Value::Null),
    )
}

#[test]
fn the_document_is_openapi_3_1_and_names_every_route_and_its_errors() {
    let served = served();
    // Open without a token, like /health.
    let response = client()
        .get(format!("{}/api/v1/openapi.json", served.server.base))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let doc: Value = response.json().unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    for (method, path) in ROUTES {
        let op = &paths[path][method];
        assert!(op.is_object(), "{method} {path} missing");
        let responses = op["responses"].as_object().unwrap();
        assert!(
            responses.keys().any(|c| c.starts_with('2')),
            "{method} {path}: no success answer"
        );
        for code in ["500", "503"] {
            assert!(responses.contains_key(code), "{method} {path}: no {code}");
        }
        if path.starts_with("/api/v1/") {
            assert!(responses.contains_key("401"), "{method} {path}: no 401");
            assert_eq!(op["security"], json!([{"bearer": []}]), "{method} {path}");
        }
        // A body is taken (and refused unless JSON) by POST and PUT only.
        if method == "post" || method == "put" {
            assert!(responses.contains_key("415"), "{method} {path}: no 415");
        }
    }
    let operations: usize = paths
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum();
    assert_eq!(operations, ROUTES.len(), "routes the test does not know");
    let trigger = &doc["components"]["schemas"]["TriggerRequest"];
    assert_eq!(trigger["required"], json!(["tag_ids"]), "{trigger}");
    assert!(doc["components"]["schemas"]["RunReport"].is_object());
}

/// Runs schemathesis against the server with `config` (TOML); asserts it
/// found nothing.
fn schemathesis(
    served: &Served,
    work: &Path,
    name: &str,
    config: &str,
    extra: &[&str],
    tested: usize,
) {
    let python = python::python_with(&["schemathesis"], &["schemathesis==4.32.5"]);
    let config_file = work.join(format!("{name}.toml"));
    std::fs::write(&config_file, config).unwrap();
    let output = Command::new(python.with_file_name("schemathesis"))
        .arg("--config-file")
        .arg(&config_file)
        .arg("--no-color")
        .arg("run")
        .arg(format!("{}/api/v1/openapi.json", served.server.base))
        .args(["-H", &format!("Authorization: Bearer {ADMIN}")])
        // Every check but one: `positive_data_acceptance` wants every body
        // the document allows to be accepted, and the document cannot know
        // which tag ids are loaded now or what the rule language allows
        // (those answers are 400s naming the problem).
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args([
            "--phases",
            "coverage,fuzzing,stateful",
            "--max-examples",
            "40",
        ])
        .args(["--workers", "2", "--request-timeout", "30"])
        .arg("--report-dir")
        .arg(work.join(name))
        .args(extra)
        .current_dir(work)
        .output()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis ({name}) found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(&format!("Tested: {tested}\n")), "{stdout}");
}

#[test]
fn schemathesis_finds_no_server_error_and_no_answer_outside_the_document() {
    let served = served();
    let work = tempfile::tempdir().unwrap();
    // A finished task and a user with tags, so the fuzzer also reaches
    // the handlers behind the ids and not only their 404s.
    let trigger = client()
        .post(format!("{}/api/v1/tags/trigger", served.server.base))
        .bearer_auth(ADMIN)
        .json(&json!({"tag_ids": [1, 2, 3, 4, 5, 6, 7, 8], "as_of": "2025-01-15"}))
        .send()
        .unwrap();
    assert_eq!(trigger.status().as_u16(), 202);
    let task_id = trigger.json::<Value>().unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while get(&served, &format!("/api/v1/tasks/{task_id}/status")).1["status"]["status"]
        != "completed"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "task did not complete"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let saved = client()
        .put(format!("{}/api/v1/audiences/rich", served.server.base))
        .bearer_auth(ADMIN)
        .json(&json!({"expr": "1 AND NOT 3"}))
        .send()
        .unwrap();
    assert_eq!(saved.status().as_u16(), 200);
    let (_, holders) = get(&served, "/api/v1/tags/1/users?limit=1");
    let user_id = holders["users"][0].as_str().unwrap().to_string();

    // Generated ids everywhere (ownership transfers of random ids included).
    schemathesis(&served, work.path(), "generated", "", &[], ROUTES.len());
    // Real ids in the paths. Ownership transfers are left out here: handing
    // tag 1 to a made-up plugin would (rightly) stop it being served.
    let real = format!(
        "[parameters]\n\"path.tag_id\" = 1\n\"path.task_id\" = \"{task_id}\"\n\"path.user_id\" = \"{user_id}\"\n\"path.name\" = \"rich\"\n"
    );
    schemathesis(
        &served,
        work.path(),
        "real-ids",
        &real,
        &["--exclude-path", "/api/v1/tags/{tag_id}/owner"],
        ROUTES.len() - 1,
    );
    let log = std::fs::read_to_string(&served.log).unwrap();
    assert!(!log.contains("panic"), "a handler panicked:\n{log}");
    assert!(!log.contains(ADMIN), "the token reached the log");
}
