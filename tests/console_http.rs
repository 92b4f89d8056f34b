//! The console over plain HTTP against a real `tag-server` process with
//! tokens: a tag page over a history of rules near the size limits, loaded
//! by several readers at once while `/health` must keep answering at once;
//! the size limits a stored rule is held to; and member links that name
//! their user whatever characters the id holds.

mod support;

use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{client, reference_plugins_dir, sample_data, tokens_file, ServerProcess};

const ADMIN: &str = "adm-console-http-5e0c2a9d71";
const READER: &str = "rdr-console-http-8b3f61c0e4";

/// A server with an admin and a read token; its work directory with it.
fn start(data: &Path) -> (ServerProcess, tempfile::TempDir, tempfile::TempDir) {
    let work = tempfile::tempdir().unwrap();
    let tokens = tokens_file(work.path(), ADMIN, READER);
    let plugins = reference_plugins_dir();
    let server = ServerProcess::start_in(
        work.path(),
        data,
        plugins.path(),
        &["--tokens-file", tokens.to_str().unwrap()],
    );
    (server, work, plugins)
}

/// The start of a JSON answer, for a failure's message (rules here are
/// megabytes).
fn brief(answer: &Value) -> String {
    answer.to_string().chars().take(400).collect()
}

/// `PUT /api/v1/tags/{tag}/rule` as the admin: status and body.
fn put_rule(base: &str, tag: u32, rule: &Value) -> (u16, Value) {
    let response = client()
        .put(format!("{base}/api/v1/tags/{tag}/rule"))
        .bearer_auth(ADMIN)
        .json(rule)
        .send()
        .unwrap();
    (response.status().as_u16(), response.json().unwrap())
}

/// A GET with the admin's bearer token: status and JSON body.
fn api_get(base: &str, path: &str) -> (u16, Value) {
    let response = client()
        .get(format!("{base}{path}"))
        .bearer_auth(ADMIN)
        .send()
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}

/// Signs in to the console with `token`: the `Cookie` header to send.
fn sign_in(base: &str, token: &str) -> String {
    let response = client()
        .post(format!("{base}/console/session"))
        .json(&json!({ "token": token }))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let cookie = response.headers()["set-cookie"].to_str().unwrap();
    cookie.split(';').next().unwrap().to_string()
}

/// A console page: status and HTML.
fn page(http: &reqwest::blocking::Client, base: &str, cookie: &str, path: &str) -> (u16, String) {
    let response = http
        .get(format!("{base}{path}"))
        .header("cookie", cookie)
        .send()
        .unwrap();
    (response.status().as_u16(), response.text().unwrap())
}

/// Tag 5's rule (`user_level` and `kyc_status`, both text) with one `in`
/// list of `items` on each field, version `v` shifted by 1,000 items from
/// version `v - 1` (so consecutive versions share most items).
fn in_lists(v: usize, items: usize) -> Value {
    let list = |field: &str| {
        let values: Vec<String> = (v * 1_000..v * 1_000 + items)
            .map(|i| format!("{field}-{i:07}-0123456789abcdefghijklmno"))
            .collect();
        json!({"field": field, "operator": "in", "value": values})
    };
    json!({"logic": "AND", "conditions": [list("user_level"), list("kyc_status")]})
}

#[test]
fn readers_of_a_large_rule_history_do_not_hold_up_health() {
    let data = sample_data(500);
    let (server, _work, _plugins) = start(data.path());
    let base = server.base.clone();
    // Six versions at the item limit (20,000 in two lists, each list at a
    // plugin's 10,000) and near the size limit (about 0.9 MiB each).
    for v in 0..6 {
        let rule = in_lists(v, 10_000);
        assert!(rule.to_string().len() > 900_000);
        let (code, reply) = put_rule(&base, 5, &rule);
        assert_eq!(code, 200, "{}", brief(&reply));
    }
    let cookie = sign_in(&base, READER);

    // Four readers load the tag's page over and over.
    const READERS: usize = 4;
    const ROUNDS: usize = 3;
    let stop = Arc::new(AtomicBool::new(false));
    let loaded = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let (base, cookie) = (base.clone(), cookie.clone());
            let (stop, loaded) = (Arc::clone(&stop), Arc::clone(&loaded));
            std::thread::spawn(move || -> Result<(), String> {
                let http = client();
                while !stop.load(Ordering::SeqCst) {
                    let started = Instant::now();
                    let response = match http
                        .get(format!("{base}/tags/5"))
                        .header("cookie", &cookie)
                        .send()
                    {
                        Ok(response) => response,
                        // The server was stopped under it (the test failed).
                        Err(_) if stop.load(Ordering::SeqCst) => return Ok(()),
                        Err(e) => return Err(format!("the tag page did not answer: {e}")),
                    };
                    let status = response.status().as_u16();
                    let html = response.text().unwrap_or_default();
                    if status != 200 || !html.contains("more changed lines") {
                        return Err(format!(
                            "the tag page answered {status}: {}",
                            &html[..html.len().min(300)]
                        ));
                    }
                    eprintln!("tag page in {:?}, {} bytes", started.elapsed(), html.len());
                    loaded.fetch_add(1, Ordering::SeqCst);
                }
                Ok(())
            })
        })
        .collect();

    // Meanwhile /health, every 20 ms: each answer within 100 ms.
    let health = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    let (mut polls, mut slowest, mut failure) = (0, Duration::ZERO, None);
    while loaded.load(Ordering::SeqCst) < READERS * ROUNDS && failure.is_none() {
        if Instant::now() > deadline {
            failure = Some(format!(
                "the readers loaded {} pages in 180 s",
                loaded.load(Ordering::SeqCst)
            ));
            break;
        }
        let started = Instant::now();
        let answer = health.get(format!("{base}/health")).send();
        let took = started.elapsed();
        polls += 1;
        slowest = slowest.max(took);
        match answer {
            Ok(r) if r.status().as_u16() == 200 && took <= Duration::from_millis(100) => {}
            Ok(r) => {
                failure = Some(format!(
                    "/health answered {} in {took:?} (poll {polls})",
                    r.status()
                ))
            }
            Err(e) => {
                failure = Some(format!(
                    "/health did not answer within 2 s (poll {polls}): {e}"
                ))
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::SeqCst);
    // On failure the server goes first, so no reader waits out its page.
    if failure.is_some() {
        drop(server);
    }
    let outcomes: Vec<_> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    assert_eq!(failure, None, "slowest /health {slowest:?}");
    for outcome in outcomes {
        outcome.unwrap();
    }
    assert!(polls > 10, "only {polls} polls of /health");
    eprintln!("{polls} polls of /health, slowest {slowest:?}");
}

#[test]
fn a_rule_over_the_size_limits_is_refused_and_not_stored() {
    let data = sample_data(200);
    let (server, _work, _plugins) = start(data.path());
    let base = &server.base;
    // Three lists of 7,000: each within a plugin's 10,000, 21,000 in all.
    let many = json!({"logic": "OR", "conditions": [
        in_lists(0, 7_000)["conditions"][0], in_lists(0, 7_000)["conditions"][1],
        in_lists(1, 7_000)["conditions"][0]]});
    let (code, reply) = put_rule(base, 5, &many);
    assert_eq!(code, 400, "{}", brief(&reply));
    assert_eq!(reply["success"], false, "{}", brief(&reply));
    let error = reply["error"].as_str().unwrap();
    assert!(
        error.contains("21000 list items") && error.contains("at most 20000"),
        "{}",
        brief(&reply)
    );
    // 200 items of 6,000 characters: 1.2 MB encoded.
    let long: Vec<String> = (0..100)
        .map(|i| format!("{i:06}{}", "x".repeat(6_000)))
        .collect();
    let large = json!({"logic": "AND", "conditions": [
        {"field": "user_level", "operator": "in", "value": long},
        {"field": "kyc_status", "operator": "in", "value": long}]});
    let (code, reply) = put_rule(base, 5, &large);
    assert_eq!(code, 400, "{}", brief(&reply));
    let error = reply["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("{} bytes encoded", large.to_string().len()))
            && error.contains("at most 1048576"),
        "{}",
        brief(&reply)
    );
    // At the item limit it is taken; the refused ones were never stored.
    let (code, reply) = put_rule(base, 5, &in_lists(0, 10_000));
    assert_eq!(code, 200, "{}", brief(&reply));
    let (_, history) = api_get(base, "/api/v1/tags/5/rule");
    assert_eq!(
        history["history"].as_array().unwrap().len(),
        2,
        "{}",
        brief(&history)
    );
}

/// Renames user `from` to `to` in every table of `data`.
fn rename_user(data: &Path, from: &str, to: &str) {
    use polars::prelude::*;
    for entry in std::fs::read_dir(data).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "parquet") {
            continue;
        }
        let mut df = ParquetReader::new(std::fs::File::open(&path).unwrap())
            .finish()
            .unwrap();
        let ids: StringChunked = df
            .column("user_id")
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .map(|id| id.map(|id| if id == from { to } else { id }))
            .collect();
        df.with_column(ids.with_name("user_id".into()).into_column())
            .unwrap();
        ParquetWriter::new(std::fs::File::create(&path).unwrap())
            .finish(&mut df)
            .unwrap();
    }
}

/// Triggers `body` as the admin and waits for it to complete.
fn run(base: &str, body: Value) {
    let response = client()
        .post(format!("{base}/api/v1/tags/trigger"))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let task: Value = response.json().unwrap();
    let id = task["task_id"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, status) = api_get(base, &format!("/api/v1/tasks/{id}/status"));
        match status["status"]["status"].as_str() {
            Some("completed") => return,
            Some("failed" | "cancelled") => panic!("{status}"),
            _ => assert!(Instant::now() < deadline, "{status}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_member_link_leads_to_that_members_page_whatever_the_id_holds() {
    let data = sample_data(300);
    // A user who holds tag 6 (cash-rich) under an id a URL must encode.
    let (server, _work, _plugins) = start(data.path());
    run(&server.base, json!({"tag_ids": [6], "as_of": "2025-01-15"}));
    let (_, members) = api_get(&server.base, "/api/v1/tags/6/users?limit=1");
    let holder = members["users"][0].as_str().unwrap().to_string();
    drop(server);
    let odd = "has?query #1/ä";
    rename_user(data.path(), &holder, odd);
    let (server, _work, _plugins) = start(data.path());
    run(&server.base, json!({"tag_ids": [6], "as_of": "2025-01-15"}));

    let cookie = sign_in(&server.base, READER);
    let http = client();
    let (code, html) = page(&http, &server.base, &cookie, "/tags/6");
    assert_eq!(code, 200);
    // The member's link, as the page writes it.
    let text = format!(">{odd}</a>");
    let at = html
        .find(&text)
        .unwrap_or_else(|| panic!("no link to {odd:?}: {html}"));
    let start = html[..at].rfind("href=\"").unwrap() + "href=\"".len();
    let href = &html[start..at - 1];
    let (code, user_page) = page(&http, &server.base, &cookie, href);
    assert_eq!(code, 200, "{href} answered {code}");
    assert!(user_page.contains(odd), "{href}: {user_page}");
}
