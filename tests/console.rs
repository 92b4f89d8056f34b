//! The web console in a real browser: Debian's chromium driven through
//! chromedriver (WebDriver, the fantoccini client) against a real server
//! with tokens, on sample data. Screenshots of every page land in
//! `<target>/tmp/console-screenshots/`.

mod support;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{reference_plugins_dir, sample_data, ServerProcess};

const ADMIN: &str = "adm-console-7d1e9f3a2b";
const READER: &str = "rdr-console-4c8b6a0e1f";

/// chromedriver on a free port, killed on drop.
struct Driver {
    url: String,
    child: Child,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn driver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (Debian's chromium-driver; .ci/run installs it)");
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Driver { url, child }
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                        "--disable-dev-shm-usage", "--window-size=1280,900"]}),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a chromium session")
}

fn shots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
    std::fs::write(shots().join(format!("{name}.png")), png).unwrap();
}

/// Waits until `check` holds (polling), or fails naming `what`.
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the browser is at `path`.
async fn until_at(c: &Client, path: &str) {
    until(&format!("the page {path}"), || async {
        c.current_url()
            .await
            .map(|u| u.path() == path)
            .unwrap_or(false)
    })
    .await;
}

/// Clicks the element `css` finds.
async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

async fn text(c: &Client, css: &str) -> String {
    match c.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn sign_in(c: &Client, base: &str, token: &str) {
    c.goto(&format!("{base}/tasks")).await.unwrap();
    assert!(c.current_url().await.unwrap().path().ends_with("/signin"));
    shot(c, "signin").await;
    let field = c
        .find(Locator::Css("#signin input[name=token]"))
        .await
        .unwrap();
    field.send_keys(token).await.unwrap();
    c.find(Locator::Css("#signin button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until_at(c, "/").await;
}

async fn chart_points(c: &Client, base: &str) -> usize {
    c.goto(&format!("{base}/tags/1")).await.unwrap();
    match c.find(Locator::Css(".chart")).await {
        Ok(chart) => chart
            .attr("data-points")
            .await
            .unwrap()
            .unwrap()
            .parse()
            .unwrap(),
        Err(_) => 0,
    }
}

/// Triggers tags 1 and 2 from the form; the new task's id.
async fn trigger_from_the_form(c: &Client, base: &str) -> String {
    c.goto(&format!("{base}/trigger")).await.unwrap();
    shot(c, "trigger").await;
    for id in [1, 2] {
        click(c, &format!("#trigger input[name=tag_ids][value='{id}']")).await;
    }
    // The date input takes the keys of the browser's locale: set it directly.
    c.execute(
        "document.querySelector('#trigger input[name=as_of]').value = '2025-01-15'",
        vec![],
    )
    .await
    .unwrap();
    c.find(Locator::Css("#trigger button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until_at(c, "/tasks").await;
    let row = c
        .wait()
        .for_element(Locator::Css("tr[data-task]"))
        .await
        .unwrap();
    row.attr("data-task").await.unwrap().unwrap()
}

#[test]
fn the_console_shows_tags_runs_rules_and_plugins_in_a_real_browser() {
    // The server and driver start outside the async runtime (the support
    // code's HTTP client blocks).
    let work = tempfile::tempdir().unwrap();
    std::fs::write(
        work.path().join("tokens"),
        format!("ops:admin:{ADMIN}\nviewer:read:{READER}\n"),
    )
    .unwrap();
    let data = sample_data(20_000);
    let plugins = reference_plugins_dir();
    let tokens = work.path().join("tokens");
    let server = ServerProcess::start_in(
        work.path(),
        data.path(),
        plugins.path(),
        &["--tokens-file", tokens.to_str().unwrap()],
    );
    let driver = driver();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(walk_through(&server.base, &driver));
    let log = std::fs::read_to_string(work.path().join("server.log")).unwrap();
    assert!(
        !log.contains(ADMIN) && !log.contains(READER),
        "a token reached the log"
    );
}

/// Every page, as an admin and then as a reader.
async fn walk_through(base: &str, driver: &Driver) {
    let base = base.to_string();
    let c = browser(driver).await;

    sign_in(&c, &base, ADMIN).await;
    let rows = c
        .find_all(Locator::Css("table.tags tbody tr"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 8, "one row per loaded tag");
    let before = chart_points(&c, &base).await;

    // Trigger from the form; the bar reaches 100% on the tasks page.
    let task_id = trigger_from_the_form(&c, &base).await;
    let row = format!("tr[data-task='{task_id}']");
    until("the task's bar at 100%", || async {
        let label = text(&c, &format!("{row} .label")).await;
        let status = text(&c, &format!("{row} .status")).await;
        label.starts_with("100%") && status == "completed"
    })
    .await;
    // Drawn full on a fresh load too: the page's content policy lets its
    // script set the width.
    c.goto(&format!("{base}/tasks")).await.unwrap();
    let filled = format!(
        "const fill = document.querySelector(\"{row} .fill\"); \
         return fill.getBoundingClientRect().width / fill.parentElement.getBoundingClientRect().width"
    );
    until("the bar drawn full", || async {
        let share = c.execute(&filled, vec![]).await.unwrap();
        share.as_f64().is_some_and(|s| s > 0.99)
    })
    .await;
    assert!(text(&c, &format!("{row} .outcome")).await.contains('✓'));
    shot(&c, "tasks").await;
    the_task_has_a_page_of_its_own(&c, &base, &task_id).await;

    // The tags table's sparklines carry their scale.
    c.goto(&format!("{base}/")).await.unwrap();
    let scale = text(&c, "table.tags td.spark .scale").await;
    assert!(scale.chars().any(|ch| ch.is_ascii_digit()), "{scale:?}");
    // The tag's chart gained a point, and its axes carry values.
    assert_eq!(chart_points(&c, &base).await, before + 1);
    assert!(c.find(Locator::Css(".chart svg polyline")).await.is_ok());
    let labels = c.find_all(Locator::Css(".chart svg text")).await.unwrap();
    assert!(labels.len() >= 3, "axis values on the members chart");
    assert!(text(&c, ".rule").await.contains("total_asset_value"));
    shot(&c, "tag").await;

    // An invalid rule: the API's error shows in place; nothing is saved.
    let area = c
        .find(Locator::Css("form.rule-edit textarea"))
        .await
        .unwrap();
    area.clear().await.unwrap();
    area.send_keys(r#"{"field": "total_asset_value", "operator": ">=", "value": "lots"}"#)
        .await
        .unwrap();
    c.find(Locator::Css("form.rule-edit button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until("the rule error in place", || async {
        text(&c, "form.rule-edit .result")
            .await
            .contains("Invalid rule")
    })
    .await;
    shot(&c, "rule-error").await;

    // A member's page lists their tags.
    let member = c.find(Locator::Css("ul.members a")).await.unwrap();
    member.click().await.unwrap();
    until("a user's page", || async {
        c.find(Locator::Css("table.user-tags tbody tr"))
            .await
            .is_ok()
    })
    .await;
    shot(&c, "user").await;

    // Reload the plugins from the button.
    c.goto(&format!("{base}/plugins")).await.unwrap();
    let checked = text(&c, "table.plugins tbody tr td:last-child").await;
    c.find(Locator::Css("#reload"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until("the reloaded listing", || async {
        let now = text(&c, "table.plugins tbody tr td:last-child").await;
        !now.is_empty() && now != checked || text(&c, ".result").await == "OK"
    })
    .await;
    assert!(text(&c, "table.plugins").await.contains("loaded"));
    shot(&c, "plugins").await;
    c.goto(&format!("{base}/")).await.unwrap();
    shot(&c, "tags").await;
    a_task_of_eight_tags_fits_1400_pixels(&c, &base).await;
    an_audience_is_built_saved_counted_and_exported(&c, &base).await;

    read_tokens_see_no_admin_actions(&c, &base).await;
    c.close().await.unwrap();
}

/// The tasks table links the task to its page: spec, timing, each tag's
/// outcome and the report.
async fn the_task_has_a_page_of_its_own(c: &Client, base: &str, task_id: &str) {
    c.goto(&format!("{base}/tasks")).await.unwrap();
    let link = format!("tr[data-task='{task_id}'] a[href='/tasks/{task_id}']");
    click(c, &link).await;
    until_at(c, &format!("/tasks/{task_id}")).await;
    let summary = text(c, "table.summary").await;
    assert!(
        summary.contains(task_id) && summary.contains("full"),
        "{summary}"
    );
    assert!(
        summary.contains("2025-01-15") && summary.contains("all users"),
        "{summary}"
    );
    let tags = c
        .find_all(Locator::Css("table.task-tags tbody tr"))
        .await
        .unwrap();
    assert_eq!(tags.len(), 2, "a row per tag of the task");
    assert!(text(c, "table.task-tags").await.contains("✓ completed"));
    assert!(c.find(Locator::Css("details.report pre")).await.is_ok());
    shot(c, "task").await;
    c.goto(&format!("{base}/tasks/no-such-task")).await.unwrap();
    assert!(text(c, "main").await.contains("no task no-such-task"));
}

/// On a 1400 px screen, a task of all eight tags keeps the tasks table
/// within the page: its outcome wraps instead of pushing the actions
/// column off-screen.
async fn a_task_of_eight_tags_fits_1400_pixels(c: &Client, base: &str) {
    c.set_window_size(1400, 900).await.unwrap();
    let submitted: Value = c
        .execute(
            "return fetch('/api/v1/tags/trigger', {method: 'POST', headers: \
             {'Content-Type': 'application/json', 'X-Requested-With': 'tag-console'}, \
             body: JSON.stringify({tag_ids: [1, 2, 3, 4, 5, 6, 7, 8], as_of: '2025-01-15'})}) \
             .then(r => r.json()).then(b => b.task_id)",
            vec![],
        )
        .await
        .unwrap();
    let task_id = submitted.as_str().expect("a task id").to_string();
    let row = format!("tr[data-task='{task_id}']");
    until("the eight-tag task done", || async {
        c.goto(&format!("{base}/tasks")).await.unwrap();
        text(c, &format!("{row} .status")).await == "completed"
    })
    .await;
    let fits: Value = c
        .execute(
            "const t = document.querySelector('table.tasks'); \
             return [t.scrollWidth, t.clientWidth, document.documentElement.clientWidth];",
            vec![],
        )
        .await
        .unwrap();
    let [scroll, client, page] = [0, 1, 2].map(|i| fits[i].as_f64().unwrap());
    assert!(
        scroll <= client + 1.0 && client <= page,
        "the tasks table overflows: {fits}"
    );
    assert_eq!(
        text(c, &format!("{row} .outcome"))
            .await
            .matches('✓')
            .count(),
        8
    );
    shot(c, "tasks-1400").await;
    c.set_window_size(1280, 900).await.unwrap();
}

/// What the API answers for `expr` (asked from the page, with its session).
async fn api_count(c: &Client, expr: &str) -> u64 {
    let script = format!(
        "return fetch('/api/v1/audiences/query', {{method: 'POST', headers: \
         {{'Content-Type': 'application/json', 'X-Requested-With': 'tag-console'}}, \
         body: JSON.stringify({{expr: {expr:?}, limit: 0}})}}).then(r => r.json()).then(b => b.count)"
    );
    c.execute(&script, vec![])
        .await
        .unwrap()
        .as_u64()
        .expect("a count")
}

/// The audience page: an expression typed with a name taken from the
/// suggestions, its count as the API says, an error pointing at the token,
/// saving, the saved audience's count, its export and its page.
async fn an_audience_is_built_saved_counted_and_exported(c: &Client, base: &str) {
    c.goto(&format!("{base}/audiences")).await.unwrap();
    let expr = c.find(Locator::Css("#expr")).await.unwrap();
    expr.send_keys("(1 OR 2) AND NOT 99").await.unwrap();
    until("the error pointing at the token", || async {
        let shown = text(c, "#expr-error").await;
        shown.contains("position 17") && shown.contains("99")
    })
    .await;
    expr.clear().await.unwrap();
    expr.send_keys("(1 OR 2) AND NOT LowRi").await.unwrap();
    until("the name offered", || async {
        text(c, "#suggest").await.contains("LowRiskUserTask")
    })
    .await;
    click(c, "#suggest button").await;
    let value = expr.prop("value").await.unwrap().unwrap_or_default();
    assert!(
        value.starts_with("(1 OR 2) AND NOT LowRiskUserTask"),
        "{value:?}"
    );
    let want = api_count(c, "(1 OR 2) AND NOT LowRiskUserTask").await;
    assert!(want > 0);
    until("the live count", || async {
        text(c, "#count").await == want.to_string()
    })
    .await;
    assert!(c.find(Locator::Css("#audience-members li a")).await.is_ok());
    shot(c, "audience-query").await;
    let save = c
        .find(Locator::Css("#save-audience input[name=name]"))
        .await
        .unwrap();
    save.send_keys("wealthy-not-low-risk").await.unwrap();
    click(c, "#save-audience button").await;
    until("the saved audience listed", || async {
        text(c, "table.audiences")
            .await
            .contains("wealthy-not-low-risk")
    })
    .await;
    assert_eq!(text(c, "table.audiences td.num").await, want.to_string());
    // The CSV export: a header and one line per member.
    let lines: Value = c
        .execute(
            "const a = document.querySelector('table.audiences a.export[data-format=csv]'); \
             return fetch(a.href).then(r => r.text()).then(t => t.trim().split('\\n').length)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(lines.as_u64(), Some(want + 1), "header and members");
    shot(c, "audiences").await;
    click(c, "table.audiences td a").await;
    until_at(c, "/audiences/wealthy-not-low-risk").await;
    until("the audience's members", || async {
        c.find(Locator::Css("#audience-members li a")).await.is_ok()
    })
    .await;
    shot(c, "audience").await;
    // The tags page's overlap heatmap.
    c.goto(&format!("{base}/")).await.unwrap();
    let cells = c.find_all(Locator::Css(".overlap svg rect")).await.unwrap();
    assert_eq!(cells.len(), 64, "8 by 8 cells");
}

/// Signed out, the session's cookie opens nothing any more. Signed in with
/// a read token: no trigger link, no reload button, and the API refuses
/// the call the page would make.
async fn read_tokens_see_no_admin_actions(c: &Client, base: &str) {
    let session = c.get_named_cookie("tag_session").await.unwrap();
    c.find(Locator::Css("#signout"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until_at(c, "/signin").await;
    // The old cookie put back: the server ended its session.
    c.add_cookie(session).await.unwrap();
    c.goto(&format!("{base}/tasks")).await.unwrap();
    until_at(c, "/signin").await;
    sign_in(c, base, READER).await;
    assert!(c
        .find(Locator::Css("nav a[href='/trigger']"))
        .await
        .is_err());
    c.goto(&format!("{base}/plugins")).await.unwrap();
    assert!(c.find(Locator::Css("#reload")).await.is_err());
    let status: Value = c
        .execute(
            "return fetch('/api/v1/plugins/reload', {method: 'POST', headers: \
             {'X-Requested-With': 'tag-console'}}).then(r => r.status)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(status, 403);
    // Without the console's header, the cookie alone does not authenticate
    // a state-changing call (what a cross-site form would send).
    let status: Value = c
        .execute(
            "return fetch('/api/v1/plugins/reload', {method: 'POST'}).then(r => r.status)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(status, 401);
}
