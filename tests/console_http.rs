//! The console over plain HTTP against a real `tag-server` process with
//! tokens: a tag page over a history of rules near the size limits, loaded
//! by several readers at once while `/health` must keep answering at once;
//! the size limits a stored rule is held to; member links that name
//! their user whatever characters the id holds; sessions kept in the store
//! (a sign-out or the expiry ends them, an API token is no session); and
//! the security headers of every answer.

mod support;

use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{
    api_with_cookie, assert_console_refuses, client, console_sign_in, get_with_cookie,
    reference_plugins_dir, sample_data, tokens_file, ServerProcess,
};

const ADMIN: &str = "adm-console-http-5e0c2a9d71";
const READER: &str = "rdr-console-http-8b3f61c0e4";

/// A server with an admin and a read token; its work directory with it.
fn start(data: &Path) -> (ServerProcess, tempfile::TempDir, tempfile::TempDir) {
    start_with(data, &[])
}

/// [`start`] with `extra` flags.
fn start_with(
    data: &Path,
    extra: &[&str],
) -> (ServerProcess, tempfile::TempDir, tempfile::TempDir) {
    let work = tempfile::tempdir().unwrap();
    let tokens = tokens_file(work.path(), ADMIN, READER);
    let plugins = reference_plugins_dir();
    let mut flags = vec!["--tokens-file", tokens.to_str().unwrap()];
    flags.extend_from_slice(extra);
    let server = ServerProcess::start_in(work.path(), data, plugins.path(), &flags);
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
    let (cookie, _) = console_sign_in(&base, READER);

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

    let (cookie, _) = console_sign_in(&server.base, READER);
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

/// The sessions in the store of a server started by [`start`] in `work`:
/// (id digest, token name, role), read from its SQLite control file.
fn stored_sessions(work: &Path) -> Vec<(String, String, String)> {
    let conn = rusqlite::Connection::open(work.join("t.control.db")).unwrap();
    let mut stmt = conn
        .prepare("SELECT id_digest, token_name, role FROM console_sessions")
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    rows
}

#[test]
fn signing_out_ends_the_session_and_an_api_token_is_no_session() {
    let data = sample_data(200);
    let (server, work, _plugins) = start(data.path());
    let base = &server.base;
    let (cookie, set) = console_sign_in(base, READER);
    for part in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(set.split("; ").any(|p| p == part), "{part} in {set}");
    }
    assert!(!set.contains("Secure"), "{set}");
    // The cookie holds a random id, not the token; the store only its digest.
    assert!(!set.contains(READER), "{set}");
    let id = cookie.strip_prefix("tag_session=").unwrap();
    assert!(
        id.len() >= 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    let digest = format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(id));
    let role = |r: &str| r.to_string();
    assert_eq!(
        stored_sessions(work.path()),
        [(digest, role("viewer"), role("read"))]
    );
    let (second, _) = console_sign_in(base, READER);
    assert_ne!(second, cookie, "each sign-in opens its own session");

    // The session opens the pages and the API.
    let (code, _, html) = get_with_cookie(base, "/tasks", &cookie);
    assert_eq!(code, 200);
    assert!(
        html.contains(r#"<span class="who">viewer</span>"#),
        "{html}"
    );
    assert_eq!(api_with_cookie(base, "/api/v1/tasks", &cookie), 200);

    // Signing out ends it on the server: the same cookie is refused after.
    let out = client()
        .delete(format!("{base}/console/session"))
        .header("cookie", &cookie)
        .send()
        .unwrap();
    assert_eq!(out.status().as_u16(), 200);
    let cleared = out.headers()["set-cookie"].to_str().unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    assert_console_refuses(base, &cookie);
    assert_eq!(stored_sessions(work.path()).len(), 1, "the other one stays");
    assert_eq!(api_with_cookie(base, "/api/v1/tasks", &second), 200);

    // An API token in the cookie is no session.
    assert_console_refuses(base, &format!("tag_session={READER}"));
    assert_console_refuses(base, &format!("tag_session={ADMIN}"));
}

#[test]
fn an_expired_session_is_refused_and_deleted_and_the_cookie_is_secure_when_asked() {
    let data = sample_data(200);
    let flags = ["--console-session-secs", "4", "--secure-cookies"];
    let (server, work, _plugins) = start_with(data.path(), &flags);
    let base = &server.base;
    let signed_in = Instant::now();
    let (cookie, set) = console_sign_in(base, ADMIN);
    assert!(set.ends_with("; Max-Age=4; Secure"), "{set}");
    let (code, _, _) = get_with_cookie(base, "/tasks", &cookie);
    assert_eq!(code, 200);
    assert!(
        signed_in.elapsed() < Duration::from_secs(3),
        "too slow to use the session before it expires"
    );
    assert_eq!(stored_sessions(work.path()).len(), 1);
    // Past its four seconds (counted in whole seconds of the server's clock).
    std::thread::sleep(Duration::from_secs(5).saturating_sub(signed_in.elapsed()));
    assert_console_refuses(base, &cookie);
    assert_eq!(
        stored_sessions(work.path()),
        [],
        "the expired session is deleted"
    );
}

/// The console's content policy allows nothing inline: what a page must
/// hold to work under it.
fn assert_nothing_inline(path: &str, html: &str) {
    assert!(!html.contains(" style="), "{path}: an inline style: {html}");
    assert!(!html.contains("<style"), "{path}: a style element: {html}");
    let handler = html.match_indices(" on").any(|(i, _)| {
        let rest = &html[i + 3..];
        let name = rest.bytes().take_while(u8::is_ascii_lowercase).count();
        name > 0 && rest[name..].starts_with('=')
    });
    assert!(!handler, "{path}: an inline event handler: {html}");
    for script in html.split("<script").skip(1) {
        let tag = &script[..script.find('>').unwrap()];
        assert!(
            tag.contains("src=\"/console/"),
            "{path}: an inline script: {tag}"
        );
    }
}

#[test]
fn every_answer_carries_the_security_headers() {
    let data = sample_data(200);
    let (server, _work, _plugins) = start(data.path());
    let base = &server.base;
    run(base, json!({"tag_ids": [1], "as_of": "2025-01-15"}));
    let (cookie, _) = console_sign_in(base, ADMIN);
    let http = support::no_redirects();
    let headers = |path: &str, with_cookie: bool| {
        let mut request = http.get(format!("{base}{path}"));
        if with_cookie {
            request = request.header("cookie", &cookie);
        }
        let response = request.send().unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        (status, headers, response.text().unwrap_or_default())
    };
    let header = |h: &reqwest::header::HeaderMap, name: &str| {
        h.get(name)
            .map_or(String::new(), |v| v.to_str().unwrap().to_string())
    };
    let common = |path: &str, h: &reqwest::header::HeaderMap| {
        assert_eq!(header(h, "x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header(h, "x-frame-options"), "DENY", "{path}");
        assert_eq!(header(h, "referrer-policy"), "no-referrer", "{path}");
        let policy = header(h, "content-security-policy");
        assert!(
            policy.contains("frame-ancestors 'none'"),
            "{path}: {policy}"
        );
        assert!(!policy.contains("unsafe"), "{path}: {policy}");
        policy
    };
    let pages = ["/", "/tasks", "/plugins", "/trigger", "/tags/1", "/signin"];
    for path in pages
        .iter()
        .chain(&["/console/app.js", "/console/style.css"])
    {
        let (status, h, body) = headers(path, true);
        assert_eq!(status, 200, "{path}");
        let policy = common(path, &h);
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
        ] {
            assert!(policy.contains(directive), "{path}: {policy}");
        }
        if pages.contains(path) {
            assert_nothing_inline(path, &body);
        }
    }
    // The tasks page shows the run's bar, without an inline width.
    let (_, _, tasks) = headers("/tasks", true);
    assert!(tasks.contains("data-percent=\"100\""), "{tasks}");
    // The redirect to the sign-in form, the API's answers and /health.
    let (status, h, _) = headers("/tasks", false);
    assert_eq!(status, 303);
    assert!(common("/tasks", &h).contains("script-src 'self'"));
    for path in ["/api/v1/tasks", "/health", "/api/v1/no-such-thing"] {
        let (_, h, _) = headers(path, true);
        assert!(common(path, &h).contains("default-src 'none'"), "{path}");
    }
}
