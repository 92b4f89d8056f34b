//! Loading real plugin libraries: the eight reference tags with their
//! metadata and default rules, and every kind of bad file reported precisely
//! while the rest still load.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use support::*;
use tag_host::plugins::load_dir;
use tag_plugin_api::owned::OwnedBatch;
use tag_plugin_api::{ColumnType, Date};
use tag_plugin_loader::{LoadReport, Outcome, Rejection};
use tag_plugin_loader::{TagFailure, TagRegistry};

fn load(dir: &Path) -> (TagRegistry, LoadReport) {
    load_dir(dir).expect("plugins directory is readable")
}

fn rejection<'r>(report: &'r LoadReport, file: &str) -> &'r Rejection {
    let found = report
        .files
        .iter()
        .find(|f| f.path.file_name().is_some_and(|n| n == file));
    match found.map(|f| &f.outcome) {
        Some(Outcome::Rejected(r)) => r,
        other => panic!("{file} should be rejected, got {other:?}"),
    }
}

fn as_of() -> Date {
    Date::parse("2025-01-15").unwrap()
}

/// Evaluates tag `id`'s default rule through the loaded plugin.
fn run_default(registry: &TagRegistry, id: u32, batch: &OwnedBatch) -> Vec<bool> {
    let tag = registry
        .get(id)
        .unwrap_or_else(|| panic!("tag {id} is loaded"));
    batch
        .with_ffi(|ffi| tag.evaluate(ffi, &tag.info.default_rule, as_of()))
        .expect("evaluates")
        .to_bools()
}

#[test]
fn the_eight_reference_tags_load_with_their_metadata() {
    let dir = reference_plugins_dir();
    let (registry, report) = load(dir.path());
    assert_eq!(report.rejected().count(), 0, "{report}");
    assert_eq!(report.loaded().count(), 5);
    let expected = [
        (
            1,
            "HighNetWorthUserTask",
            "高净值用户",
            "财富类",
            "wealth.so",
        ),
        (2, "ActiveTraderTask", "活跃交易者", "行为类", "behavior.so"),
        (3, "LowRiskUserTask", "低风险用户", "风险类", "risk.so"),
        (4, "NewUserTask", "新注册用户", "生命周期类", "lifecycle.so"),
        (5, "VIPUserTask", "VIP客户", "生命周期类", "lifecycle.so"),
        (6, "CashRichUserTask", "现金充足用户", "财富类", "wealth.so"),
        (
            7,
            "YoungUserTask",
            "年轻用户",
            "人口统计类",
            "demographic.so",
        ),
        (
            8,
            "RecentActiveUserTask",
            "最近活跃用户",
            "行为类",
            "behavior.so",
        ),
    ];
    assert_eq!(registry.ids(), (1..=8).collect::<Vec<_>>());
    for (id, class, description, category, file) in expected {
        let tag = registry.get(id).unwrap();
        assert_eq!(
            (
                tag.info.task_class.as_str(),
                tag.info.description.as_str(),
                tag.info.category.as_str()
            ),
            (class, description, category)
        );
        assert_eq!(tag.source.file_name().unwrap(), file);
        assert!(tag.validate_rule(&tag.info.default_rule).is_ok());
    }
    let inputs = &registry.get(1).unwrap().info.inputs;
    assert_eq!(inputs.len(), 2);
    assert!(inputs
        .iter()
        .all(|i| i.table == "user_asset_summary" && i.column_type == ColumnType::Float64));
    // The recorded SHA-256 is the file's, computed here independently.
    let mut checked = 0;
    for (file, _) in report.loaded() {
        use sha2::Digest;
        let bytes = std::fs::read(&file.path).unwrap();
        let digest: String = sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(file.sha256, digest, "{}", file.path.display());
        checked += 1;
    }
    assert_eq!(checked, 5, "every reference plugin file is checked");
}

#[test]
fn default_rules_give_the_right_masks_at_thresholds_and_nulls() {
    let dir = reference_plugins_dir();
    let (registry, _) = load(dir.path());
    let wealth = OwnedBatch::new()
        .float64(
            "total_asset_value",
            &[
                Some(150_000.0),
                Some(149_999.99),
                None,
                Some(2e6),
                Some(150_000.0),
            ],
        )
        .float64(
            "cash_balance",
            &[
                Some(60_000.0),
                Some(90_000.0),
                Some(90_000.0),
                Some(50_000.0),
                None,
            ],
        );
    assert_eq!(
        run_default(&registry, 1, &wealth),
        [true, false, false, false, false]
    );
    assert_eq!(
        run_default(&registry, 6, &wealth),
        [true, true, true, true, false]
    );

    let trades = OwnedBatch::new().int32("trade_count_30d", &[Some(10), Some(11), None]);
    assert_eq!(run_default(&registry, 2, &trades), [false, true, false]);

    let risk = OwnedBatch::new().float64(
        "risk_score",
        &[Some(0.0), Some(30.0), Some(30.01), Some(-0.01), None],
    );
    assert_eq!(
        run_default(&registry, 3, &risk),
        [true, true, false, false, false]
    );

    // as_of 2025-01-15: 30 days back is 2024-12-16, 7 days back 2025-01-08.
    let registered = OwnedBatch::new().date(
        "registration_date",
        &[
            Some("2024-12-16"),
            Some("2024-12-15"),
            Some("2025-01-15"),
            Some("2025-01-16"),
            None,
        ],
    );
    assert_eq!(
        run_default(&registry, 4, &registered),
        [true, false, true, false, false]
    );

    let vip = OwnedBatch::new()
        .string(
            "user_level",
            &[
                Some("VIP2"),
                Some("VIP3"),
                Some("VIP1"),
                Some("vip3"),
                None,
                Some("VIP2"),
            ],
        )
        .string(
            "kyc_status",
            &[
                Some("verified"),
                Some("verified"),
                Some("verified"),
                Some("verified"),
                Some("verified"),
                Some("pending"),
            ],
        );
    assert_eq!(
        run_default(&registry, 5, &vip),
        [true, true, false, false, false, false]
    );

    let ages = OwnedBatch::new().int32("age", &[Some(17), Some(18), Some(30), Some(31), None]);
    assert_eq!(
        run_default(&registry, 7, &ages),
        [false, true, true, false, false]
    );

    let logins = OwnedBatch::new().date(
        "last_login_date",
        &[
            Some("2025-01-08"),
            Some("2025-01-07"),
            Some("2025-01-15"),
            None,
        ],
    );
    assert_eq!(
        run_default(&registry, 8, &logins),
        [true, false, true, false]
    );
}

#[test]
fn a_replaced_rule_is_honoured_and_an_invalid_one_refused() {
    let dir = reference_plugins_dir();
    let (registry, _) = load(dir.path());
    let tag = registry.get(6).unwrap();
    let batch = OwnedBatch::new().float64("cash_balance", &[Some(10.0), Some(5.0), None]);
    let rule = r#"{"field": "cash_balance", "operator": ">", "value": 6}"#;
    let mask = batch
        .with_ffi(|ffi| tag.evaluate(ffi, rule, as_of()))
        .unwrap();
    assert_eq!(mask.to_bools(), [true, false, false]);
    let bad = r#"{"field": "cash", "operator": ">", "value": 6}"#;
    match tag.validate_rule(bad) {
        Err(TagFailure::InvalidRule { tag_id: 6, message }) => {
            assert!(message.contains("unknown field \"cash\""), "{message}")
        }
        other => panic!("expected an invalid-rule error, got {other:?}"),
    }
    let err = batch
        .with_ffi(|ffi| tag.evaluate(ffi, bad, as_of()))
        .unwrap_err();
    assert!(matches!(err, TagFailure::InvalidRule { .. }), "{err}");
}

#[test]
fn misbehaving_tags_fail_their_call_not_the_process() {
    let dir = plugins_dir(&[
        ("misbehaving.so", fixture("misbehaving")),
        ("wealth.so", plugin("wealth")),
    ]);
    let (registry, report) = load(dir.path());
    assert_eq!(report.rejected().count(), 0, "{report}");
    let batch = OwnedBatch::new().float64("cash_balance", &[Some(1.0), None, Some(70_000.0)]);
    let call = |id: u32| {
        let tag = registry.get(id).unwrap();
        batch.with_ffi(|ffi| tag.evaluate(ffi, &tag.info.default_rule, as_of()))
    };
    match call(901) {
        Err(TagFailure::PluginPanicked {
            tag_id: 901,
            message,
        }) => assert!(message.contains("always panics"), "{message}"),
        other => panic!("901: {other:?}"),
    }
    match call(902) {
        Err(TagFailure::PluginError {
            tag_id: 902,
            message,
        }) => assert!(message.contains("always fails"), "{message}"),
        other => panic!("902: {other:?}"),
    }
    assert_eq!(
        call(903),
        Err(TagFailure::WrongMaskLength {
            tag_id: 903,
            expected: 3,
            returned: 4
        })
    );
    // The process is fine and the other plugin still answers.
    assert_eq!(call(6).unwrap().to_bools(), [false, false, true]);
}

#[test]
fn bad_files_are_rejected_precisely_while_the_rest_load() {
    let dir = plugins_dir(&[
        ("a_wealth.so", plugin("wealth")),
        ("b_behavior.so", plugin("behavior")),
        ("c_incompatible.so", fixture("incompatible")),
        ("d_not_a_plugin.so", fixture("not-a-plugin")),
        ("e_wealth_copy.so", plugin("wealth")),
        ("f_risk_world_writable.so", plugin("risk")),
        ("g_lifecycle.so", plugin("lifecycle")),
    ]);
    std::fs::write(dir.path().join("h_garbage.so"), b"this is not a library").unwrap();
    std::fs::set_permissions(
        dir.path().join("h_garbage.so"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    std::fs::set_permissions(
        dir.path().join("f_risk_world_writable.so"),
        std::fs::Permissions::from_mode(0o757),
    )
    .unwrap();
    std::fs::write(dir.path().join("README.txt"), b"not a library, ignored").unwrap();

    let (registry, report) = load(dir.path());
    assert_eq!(
        report.files.len(),
        8,
        "only library files are considered: {report}"
    );

    match rejection(&report, "c_incompatible.so") {
        Rejection::IncompatibleApi { found, expected } => {
            assert_eq!((found.as_str(), expected.as_str()), ("0.0.9", "0.1.0"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        rejection(&report, "d_not_a_plugin.so"),
        &Rejection::NotATagPlugin
    );
    // Two files claim tags 1 and 6 with no recorded owner: neither loads,
    // whatever their names' order.
    for file in ["a_wealth.so", "e_wealth_copy.so"] {
        match rejection(&report, file) {
            Rejection::ContestedTagId { tag_id, files } => {
                assert_eq!(*tag_id, 1);
                let names: Vec<_> = files.iter().map(|f| f.file_name().unwrap()).collect();
                assert_eq!(names, ["a_wealth.so", "e_wealth_copy.so"]);
            }
            other => panic!("{file}: {other:?}"),
        }
    }
    assert!(matches!(
        rejection(&report, "f_risk_world_writable.so"),
        Rejection::WritableFile { mode: 0o757, .. }
    ));
    assert!(matches!(
        rejection(&report, "h_garbage.so"),
        Rejection::NotALibrary(_)
    ));

    // Both files of the clash are named in the message a person reads.
    let text = report.to_string();
    let line = text
        .lines()
        .find(|l| l.starts_with("REJECTED") && l.contains("e_wealth_copy.so:"))
        .expect("clash reported");
    assert!(
        line.contains("tag id 1 is claimed by") && line.contains("a_wealth.so"),
        "{line}"
    );

    // The good files still loaded: behavior (2, 8), lifecycle (4, 5).
    assert_eq!(registry.ids(), vec![2, 4, 5, 8]);
}

#[test]
fn a_group_writable_directory_rejects_every_file() {
    let dir = reference_plugins_dir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o775)).unwrap();
    let (registry, report) = load(dir.path());
    assert!(registry.is_empty());
    assert_eq!(report.rejected().count(), 5);
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let expected = Rejection::WritableDirectory {
        dir: dir.path().canonicalize().unwrap(),
        mode: 0o775,
        owner: me,
        server_uid: me,
    };
    assert!(report.rejected().all(|(_, r)| *r == expected), "{report}");
}

#[test]
fn a_missing_directory_is_an_error_naming_it() {
    let err = load_dir(Path::new("/nonexistent/plugins")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/plugins"), "{err}");
}

#[test]
fn cli_lists_plugins_and_exits_non_zero_on_rejections() {
    let dir = reference_plugins_dir();
    let dir_arg = dir.path().to_str().unwrap();
    let (code, out, _) = tag_server(&["plugins", "--plugins-dir", dir_arg]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("8 tags from 5 files"), "{out}");
    for class in [
        "HighNetWorthUserTask",
        "RecentActiveUserTask",
        "VIPUserTask",
    ] {
        assert!(out.contains(class), "{out}");
    }

    std::fs::copy(fixture("not-a-plugin"), dir.path().join("zz.so")).unwrap();
    std::fs::set_permissions(
        dir.path().join("zz.so"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let (code, out, _) = tag_server(&["plugins", "--plugins-dir", dir_arg]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("8 tags from 5 files"), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("REJECTED")
            && l.contains("zz.so")
            && l.contains("not a tag plugin")),
        "{out}"
    );
}

#[test]
fn cli_check_runs_each_tag_on_the_sample_batch() {
    let dir = plugins_dir(&[
        ("wealth.so", plugin("wealth")),
        ("misbehaving.so", fixture("misbehaving")),
    ]);
    let wealth = dir.path().join("wealth.so");
    let (code, out, _) = tag_server(&[
        "plugins",
        "check",
        wealth.to_str().unwrap(),
        "--as-of",
        "2025-01-15",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("ok") && l.contains("tag 1 HighNetWorthUserTask")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("ok") && l.contains("tag 6 CashRichUserTask")),
        "{out}"
    );

    let bad = dir.path().join("misbehaving.so");
    let (code, out, _) = tag_server(&["plugins", "check", bad.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("FAILED") && l.contains("901") && l.contains("panicked")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("FAILED") && l.contains("902") && l.contains("always fails")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("FAILED") && l.contains("903") && l.contains("mask of")),
        "{out}"
    );

    let incompatible = plugins_dir(&[("incompatible.so", fixture("incompatible"))]);
    let (code, out, _) = tag_server(&[
        "plugins",
        "check",
        incompatible
            .path()
            .join("incompatible.so")
            .to_str()
            .unwrap(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("incompatible plugin-api version"), "{out}");
}

/// Tag 960's own words for what its code adds to its rule tree
/// (tests/fixtures/custom).
const CUSTOM_NOTE: &str = "A user with no last_login_date counts as recently active too.";

#[test]
fn a_custom_evaluate_is_shown_beside_the_rule_tree_and_an_unsaid_one_fails_the_check() {
    let dir = plugins_dir(&[
        ("custom.so", fixture("custom")),
        ("older.so", fixture("older")),
        ("behavior.so", plugin("behavior")),
    ]);
    let data = sample_data(100);
    let work = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path(), dir.path(), &work.path().join("t.db"), &[]);
    let (_, available) = server.get("/api/v1/tags/available").unwrap();
    let tags = available["available_tags"].as_array().unwrap();
    let tag = |id: u32| tags.iter().find(|t| t["tag_id"] == id).unwrap();
    assert_eq!(tag(960)["custom_evaluate"], CUSTOM_NOTE, "{available}");
    // Absent where the tree is the whole rule, as the seed's list has it,
    // and for a library from before the custom-evaluate export, which
    // loads all the same (tag 962 declares one it cannot pass on).
    assert_eq!(available["available_tags"].as_array().unwrap().len(), 5);
    for id in [961, 962, 2, 8] {
        assert!(tag(id).get("custom_evaluate").is_none(), "{available}");
    }
    let (_, rule) = server.get("/api/v1/tags/960/rule").unwrap();
    assert_eq!(rule["custom_evaluate"], CUSTOM_NOTE, "{rule}");
    assert_eq!(rule["rule"]["rule"]["operator"], "recent_days", "{rule}");
    let (_, plain) = server.get("/api/v1/tags/8/rule").unwrap();
    assert!(plain["custom_evaluate"].is_null(), "{plain}");
    // The console says so beside the tree, and marks the tag in the list.
    let page = |path: &str| {
        let response = client()
            .get(format!("{}{path}", server.base))
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{path}");
        response.text().unwrap()
    };
    let html = page("/tags/960");
    let note = html.find(CUSTOM_NOTE).expect("the note on the tag page");
    let tree = html.find("class=\"rule\"").expect("the rule tree");
    assert!(note < tree, "the note comes before the tree it qualifies");
    assert!(!page("/tags/8").contains("custom-evaluate"));
    let list = page("/");
    assert_eq!(list.matches("custom evaluate</small>").count(), 1, "{list}");

    // `plugins check`: the declared tag passes and says what its code
    // adds; the same code unsaid fails, naming the rows.
    let library = dir.path().join("custom.so");
    let (code, out, _) = tag_server(&["plugins", "check", library.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("ok      tag 960")
            && l.ends_with(&format!("custom evaluate: {CUSTOM_NOTE}"))),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with("FAILED  tag 961")
            && l.contains("its evaluate answers otherwise than its rule tree on 1 of")
            && l.contains("TagInfo::custom_evaluate")),
        "{out}"
    );
    let behavior = dir.path().join("behavior.so");
    let (code, out, _) = tag_server(&["plugins", "check", behavior.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn building_the_workspace_never_builds_the_fixture_libraries() {
    // `cargo build` and `cargo test --workspace` build the members of the
    // root workspace into the directory tag-server loads plugins from by
    // default; the misbehaving fixtures must not be among them.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--manifest-path",
        ])
        .arg(workspace().join("Cargo.toml"))
        .output()
        .expect("cargo metadata");
    assert!(output.status.success());
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let names: Vec<&str> = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"tag-plugin-wealth"), "{names:?}");
    assert!(
        names.iter().all(|n| !n.starts_with("tag-fixture")),
        "{names:?}"
    );
    // The tests build them apart, into their own target directory.
    let misbehaving = fixture("misbehaving");
    assert!(
        misbehaving
            .components()
            .any(|c| c.as_os_str() == "e2e-plugins"),
        "{}",
        misbehaving.display()
    );
}

/// `tag-server plugins` over `dir`, with the constructor fixture's marker
/// pointed at `marker`: the listing, and whether the library was loaded.
fn list_with_marker(dir: &Path, marker: &Path) -> (String, bool) {
    let _ = std::fs::remove_file(marker);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tag-server"))
        .args(["plugins", "--plugins-dir"])
        .arg(dir)
        .env("TAG_FIXTURE_CONSTRUCTOR_MARKER", marker)
        .output()
        .expect("run tag-server plugins");
    assert!(
        output.status.code().is_some(),
        "tag-server died of a signal: {output:?}"
    );
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        marker.exists(),
    )
}

#[test]
fn untrusted_files_are_rejected_before_they_are_ever_loaded() {
    let marker_dir = tempfile::tempdir().unwrap();
    let marker = marker_dir.path().join("constructor-ran");

    // Control: in a trusted directory the library is loaded (its
    // constructor runs) and then rejected as not being a tag plugin.
    let trusted = plugins_dir(&[("ctor.so", fixture("constructor"))]);
    let (out, loaded) = list_with_marker(trusted.path(), &marker);
    assert!(loaded, "the fixture's constructor runs when loaded: {out}");
    assert!(out.contains("not a tag plugin"), "{out}");

    // A symlink into a world-writable directory (the system temp dir).
    let open_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(open_dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let target = open_dir.path().join("ctor.so");
    std::fs::copy(fixture("constructor"), &target).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
    let linked = plugins_dir(&[]);
    std::os::unix::fs::symlink(&target, linked.path().join("ctor.so")).unwrap();
    let (out, loaded) = list_with_marker(linked.path(), &marker);
    assert!(!loaded, "a rejected file was loaded: {out}");
    assert!(
        out.contains("REJECTED") && out.contains("writable by group or others"),
        "{out}"
    );

    // A 0755 plugins directory inside a 0777 parent.
    let parent = plugins_dir(&[]);
    std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let inner = parent.path().join("plugins");
    std::fs::create_dir(&inner).unwrap();
    std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::copy(fixture("constructor"), inner.join("ctor.so")).unwrap();
    std::fs::set_permissions(
        inner.join("ctor.so"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let (out, loaded) = list_with_marker(&inner, &marker);
    assert!(!loaded, "{out}");
    let parent_shown = parent.path().canonicalize().unwrap();
    assert!(
        out.contains(&format!("{} is writable", parent_shown.display())),
        "{out}"
    );
    std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

    // A file, then a directory, owned by another user (needs root to make).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let nobody = 65534;
        let owned = plugins_dir(&[("ctor.so", fixture("constructor"))]);
        std::os::unix::fs::chown(owned.path().join("ctor.so"), Some(nobody), None).unwrap();
        let (out, loaded) = list_with_marker(owned.path(), &marker);
        assert!(!loaded && out.contains("belongs to uid 65534"), "{out}");
        std::os::unix::fs::chown(owned.path().join("ctor.so"), Some(0), None).unwrap();
        std::os::unix::fs::chown(owned.path(), Some(nobody), None).unwrap();
        let (out, loaded) = list_with_marker(owned.path(), &marker);
        assert!(!loaded && out.contains("belongs to uid 65534"), "{out}");
    } else {
        eprintln!("not root: the foreign-owner cases need chown and are not run");
    }
}

#[test]
fn truncated_copies_of_a_real_plugin_are_rejected_and_the_rest_load() {
    let dir = plugins_dir(&[("behavior.so", plugin("behavior"))]);
    let whole = std::fs::read(plugin("wealth")).unwrap();
    for size in [4096usize, 65536] {
        assert!(whole.len() > size, "the plugin is larger than {size} bytes");
        let path = dir.path().join(format!("wealth_{size}.so"));
        std::fs::write(&path, &whole[..size]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // In this process and through the real binary (which used to die of
    // SIGBUS mapping such a file).
    let (registry, report) = load(dir.path());
    assert_eq!(registry.ids(), vec![2, 8]);
    for size in [4096, 65536] {
        let name = format!("wealth_{size}.so");
        match rejection(&report, &name) {
            Rejection::Truncated { size: have, needed } => {
                assert_eq!(*have, size as u64);
                assert!(*needed > *have);
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tag-server"))
        .args(["plugins", "--plugins-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(out.contains("2 tags from 1 files"), "{out}");
    assert_eq!(out.matches("truncated").count(), 2, "{out}");
}

/// Copies `source` into `dir` as `name`, mode 0755.
fn install(dir: &Path, name: &str, source: &Path) {
    let target = dir.join(name);
    let _ = std::fs::remove_file(&target);
    std::fs::copy(source, &target).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn trigger_status(server: &TestServer, tags: serde_json::Value) -> u16 {
    server
        .post(
            "/api/v1/tags/trigger",
            &serde_json::json!({"tag_ids": tags, "as_of": "2025-01-15"}),
        )
        .0
}

#[test]
fn plugins_are_listed_and_reloaded_without_a_restart() {
    use serde_json::json;
    let data = sample_data(300);
    let dir = plugins_dir(&[("wealth.so", plugin("wealth"))]);
    let work = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path(), dir.path(), &work.path().join("t.db"), &[]);

    let (code, listing) = server.get("/api/v1/plugins").unwrap();
    assert_eq!(code, 200);
    assert_eq!(
        (&listing["loaded"], &listing["rejected"]),
        (&json!(1), &json!(0))
    );
    let file = &listing["files"][0];
    assert_eq!(
        (&file["file"], &file["status"]),
        (&json!("wealth.so"), &json!("loaded"))
    );
    assert_eq!(file["plugin"], "tag-plugin-wealth");
    assert_eq!(file["tags"][0]["tag_id"], 1);
    assert_eq!(file["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(server.get("/health").unwrap().1["status"], "healthy");

    // A new library: offered after a reload, not before.
    install(dir.path(), "behavior.so", &plugin("behavior"));
    assert_eq!(trigger_status(&server, json!([2])), 400);
    let (code, reloaded) = server.post("/api/v1/plugins/reload", &json!({}));
    assert_eq!(code, 200, "{reloaded}");
    assert_eq!(reloaded["loaded"], 2);
    let (_, available) = server.get("/api/v1/tags/available").unwrap();
    assert!(
        available.to_string().contains("ActiveTraderTask"),
        "{available}"
    );
    server.run(json!({"tag_ids": [2], "as_of": "2025-01-15"}));

    // A broken file: rejected with its reason, the rest still served, and
    // /health says degraded (still 200) with the count.
    std::fs::write(dir.path().join("broken.so"), b"not a library").unwrap();
    std::fs::set_permissions(
        dir.path().join("broken.so"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let (_, reloaded) = server.post("/api/v1/plugins/reload", &json!({}));
    assert_eq!(
        (&reloaded["loaded"], &reloaded["rejected"]),
        (&json!(2), &json!(1))
    );
    let broken = reloaded["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["file"] == "broken.so")
        .unwrap();
    assert!(
        broken["reason"].as_str().unwrap().contains("ELF"),
        "{broken}"
    );
    let (code, health) = server.get("/health").unwrap();
    assert_eq!(
        (code, &health["status"], &health["rejected_plugins"]),
        (200, &json!("degraded"), &json!(1))
    );

    // A removed library stops being offered.
    std::fs::remove_file(dir.path().join("behavior.so")).unwrap();
    std::fs::remove_file(dir.path().join("broken.so")).unwrap();
    server.post("/api/v1/plugins/reload", &json!({}));
    assert_eq!(trigger_status(&server, json!([2])), 400);
    assert_eq!(trigger_status(&server, json!([1])), 202);
    assert_eq!(server.get("/health").unwrap().1["status"], "healthy");
}

#[test]
fn a_running_task_keeps_the_plugin_build_it_started_with() {
    use serde_json::json;
    let data = sample_data(2000);
    let dir = plugins_dir(&[("misbehaving.so", fixture("misbehaving"))]);
    let work = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path(), dir.path(), &work.path().join("t.db"), &[]);
    let first = server.get("/api/v1/plugins").unwrap().1["files"][0]["sha256"].clone();
    // Tag 906 holds each batch until the gate file exists.
    let gate = work.path().join("gate");
    hold_tag_906_at(&server.base, &gate);
    let held = server.trigger(json!({"tag_ids": [906], "as_of": "2025-01-15"}));
    wait_entered(&gate);
    // A new build that computes something else (build B matches everyone,
    // build A no one) replaces the library while the task is inside it.
    let mut bytes = std::fs::read(fixture("misbehaving")).unwrap();
    let mark = b"tag-fixture-build-mark:A";
    let at = bytes
        .windows(mark.len())
        .position(|w| w == mark)
        .expect("build mark");
    bytes[at + mark.len() - 1] = b'B';
    let path = dir.path().join("misbehaving.so");
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, reloaded) = server.post("/api/v1/plugins/reload", &json!({}));
    assert_eq!(code, 200, "{reloaded}");
    let second = reloaded["files"][0]["sha256"].clone();
    assert_ne!(first, second);
    // Release the held task: its remaining batches run after the reload.
    std::fs::write(&gate, b"").unwrap();
    let done = server.wait(&held);
    assert_eq!(done["status"], "completed", "{done}");
    let report = &done["result"]["tags"][0];
    assert_eq!(
        (&report["plugin"]["name"], &report["plugin"]["sha256"]),
        (&json!("tag-fixture-misbehaving"), &first)
    );
    // Build A computed every batch of it: no one matched.
    assert_eq!(
        (&report["evaluated_users"], &report["matched"]),
        (&json!(2000), &json!(0)),
        "{done}"
    );
    // A task started after the reload is computed by build B, and says so.
    let id = server.trigger(json!({"tag_ids": [906], "as_of": "2025-01-15"}));
    let after = server.wait(&id);
    let report = &after["result"]["tags"][0];
    assert_eq!(report["plugin"]["sha256"], second, "{after}");
    assert_eq!(report["matched"], 2000, "{after}");
}

#[test]
fn sighup_reloads_the_plugins_of_a_running_server() {
    let data = sample_data(100);
    let dir = plugins_dir(&[("wealth.so", plugin("wealth"))]);
    let work = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", work.path().join("t.db").display());
    let log = work.path().join("server.log");
    let server = ServerProcess::start(&[
        "--store",
        &store,
        "--data-dir",
        data.path().to_str().unwrap(),
        "--plugins-dir",
        dir.path().to_str().unwrap(),
        "--log-file",
        log.to_str().unwrap(),
    ]);
    let http = client();
    let loaded = || -> Option<u64> {
        let reply = http
            .get(format!("{}/api/v1/plugins", server.base))
            .send()
            .ok()?;
        reply.json::<serde_json::Value>().ok()?["loaded"].as_u64()
    };
    let wait_for = |want: u64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while loaded() != Some(want) {
            assert!(
                std::time::Instant::now() < deadline,
                "never saw {want} plugins loaded"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    wait_for(1);
    install(dir.path(), "behavior.so", &plugin("behavior"));
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(server.pid() as i32, libc::SIGHUP) };
    wait_for(2);
}

fn available_classes(server: &TestServer) -> std::collections::BTreeMap<u64, String> {
    let (_, body) = server.get("/api/v1/tags/available").unwrap();
    body["available_tags"]
        .as_array()
        .expect("a tag list")
        .iter()
        .map(|t| {
            (
                t["tag_id"].as_u64().unwrap(),
                t["task_class"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_recorded_owner_keeps_its_tag_ids_until_an_explicit_transfer() {
    use serde_json::json;
    let data = sample_data(200);
    let dir = plugins_dir(&[("wealth.so", plugin("wealth"))]);
    let work = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path(), dir.path(), &work.path().join("t.db"), &[]);
    assert_eq!(available_classes(&server)[&1], "HighNetWorthUserTask");

    // Another plugin claiming tag 1 is rejected, named; wealth keeps serving.
    install(dir.path(), "a_usurper.so", &fixture("usurper"));
    let (_, listing) = server.post("/api/v1/plugins/reload", &json!({}));
    let usurper = listing["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["file"] == "a_usurper.so")
        .unwrap();
    let reason = usurper["reason"].as_str().unwrap();
    assert!(
        reason.contains("belongs to plugin tag-plugin-wealth")
            && reason.contains("tag-fixture-usurper"),
        "{reason}"
    );
    assert_eq!(available_classes(&server)[&1], "HighNetWorthUserTask");
    assert_eq!(server.get("/health").unwrap().1["status"], "degraded");

    // A transfer to a plugin that does not provide the tag is refused and
    // changes nothing: the real owner keeps serving tags 1 and 6.
    let (code, refused) = server.post("/api/v1/tags/1/owner", &json!({"plugin": "no-such-plugin"}));
    assert_eq!(code, 400, "{refused}");
    let error = refused["error"].as_str().unwrap();
    assert!(
        error.contains("no-such-plugin")
            && error.contains("tag-fixture-usurper")
            && error.contains("tag-plugin-wealth"),
        "{error}"
    );
    let classes = available_classes(&server);
    assert_eq!(
        (classes[&1].as_str(), classes[&6].as_str()),
        ("HighNetWorthUserTask", "CashRichUserTask")
    );

    // The transfer is an explicit call; then the new owner serves tag 1 and
    // the old owner's library, still claiming it, is rejected.
    let (code, moved) = server.post(
        "/api/v1/tags/1/owner",
        &json!({"plugin": "tag-fixture-usurper"}),
    );
    assert_eq!(code, 200, "{moved}");
    assert_eq!(moved["previous_owner"], "tag-plugin-wealth");
    let classes = available_classes(&server);
    assert_eq!(classes[&1], "UsurperTask");
    assert_eq!(classes[&950], "UsurperOwnTask");
    let (code, bad) = server.post("/api/v1/tags/1/owner", &json!({"plugin": ""}));
    assert_eq!((code, &bad["success"]), (400, &json!(false)));
}

#[test]
fn a_clash_without_a_recorded_owner_rejects_every_claimant() {
    use serde_json::json;
    let data = sample_data(200);
    // The usurper sorts first: file order must not decide.
    let dir = plugins_dir(&[
        ("a_usurper.so", fixture("usurper")),
        ("wealth.so", plugin("wealth")),
        ("behavior.so", plugin("behavior")),
    ]);
    let work = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path(), dir.path(), &work.path().join("t.db"), &[]);
    let classes = available_classes(&server);
    assert_eq!(
        classes.keys().copied().collect::<Vec<_>>(),
        vec![2, 8],
        "{classes:?}"
    );
    let (_, listing) = server.get("/api/v1/plugins").unwrap();
    assert_eq!(listing["rejected"], 2);
    for file in listing["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["status"] == "rejected")
    {
        let reason = file["reason"].as_str().unwrap();
        assert!(
            reason.contains("tag id 1 is claimed by")
                && reason.contains("a_usurper.so")
                && reason.contains("wealth.so"),
            "{reason}"
        );
    }
    let (code, health) = server.get("/health").unwrap();
    assert_eq!(
        (code, &health["status"], &health["rejected_plugins"]),
        (200, &json!("degraded"), &json!(2))
    );
}

#[test]
fn plugins_check_with_a_data_dir_evaluates_real_rows_and_names_each_problem() {
    let data = sample_data(400);
    let dir = plugins_dir(&[
        ("wealth.so", plugin("wealth")),
        ("misbehaving.so", fixture("misbehaving")),
    ]);
    let check_sample = |file: &str, data_dir: &Path, sample: &str| {
        let library = dir.path().join(file);
        tag_server(&[
            "plugins",
            "check",
            library.to_str().unwrap(),
            "--as-of",
            "2025-01-15",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--sample",
            sample,
        ])
    };
    let check = |file: &str, data_dir: &Path| check_sample(file, data_dir, "1000");
    // Real rows: the counts equal the independent computation's.
    let (code, out, err) = check("wealth.so", data.path());
    assert_eq!(code, 0, "{out}{err}");
    let expected = oracle::expected(
        data.path(),
        Date::parse("2025-01-15").unwrap().days(),
        &[1, 6],
    );
    for (tag, class) in [(1, "HighNetWorthUserTask"), (6, "CashRichUserTask")] {
        let holders = expected.values().filter(|t| t.contains(&tag)).count();
        assert!(holders > 0);
        let line =
            format!("ok      tag {tag} {class} on data: {holders} of 400 users matched; e.g. ");
        assert!(out.contains(&line), "{line:?} missing from:\n{out}");
    }

    // A custom evaluate runs on those rows too: the panicking tag fails.
    // (Fifty users: tag 905 kills the process on batches of 100 or more,
    // which no check inside the process can survive.)
    let (code, out, _) = check_sample("misbehaving.so", data.path(), "50");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("FAILED  tag 901")
            && l.contains("on data")
            && l.contains("panicked")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("ok      tag 904") && l.contains("on data")),
        "{out}"
    );

    // A misspelt column, then a missing table.
    use polars::prelude::*;
    let asset = data.path().join("user_asset_summary.parquet");
    let mut df = ParquetReader::new(std::fs::File::open(&asset).unwrap())
        .finish()
        .unwrap();
    df.rename("cash_balance", "cash_balanse".into()).unwrap();
    ParquetWriter::new(std::fs::File::create(&asset).unwrap())
        .finish(&mut df)
        .unwrap();
    let (code, out, _) = check("wealth.so", data.path());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAILED  tag 6 CashRichUserTask on data: table user_asset_summary: column cash_balance not found"), "{out}");
    std::fs::remove_file(&asset).unwrap();
    let (code, out, _) = check("wealth.so", data.path());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAILED  tag 1 HighNetWorthUserTask on data: table user_asset_summary: no user_asset_summary.parquet"), "{out}");
}

#[test]
fn with_watch_plugins_a_dropped_in_library_is_served_without_a_call() {
    let data = sample_data(100);
    let dir = plugins_dir(&[("wealth.so", plugin("wealth"))]);
    let work = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        data.path(),
        dir.path(),
        &work.path().join("t.db"),
        &["--watch-plugins"],
    );
    assert_eq!(server.get("/api/v1/plugins").unwrap().1["loaded"], 1);
    install(dir.path(), "behavior.so", &plugin("behavior"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while available_classes(&server).get(&2).map(String::as_str) != Some("ActiveTraderTask") {
        assert!(
            std::time::Instant::now() < deadline,
            "the new library was never loaded"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::fs::remove_file(dir.path().join("behavior.so")).unwrap();
    while available_classes(&server).contains_key(&2) {
        assert!(
            std::time::Instant::now() < deadline,
            "the removed library stayed"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_clone_under_a_sticky_shared_directory_serves_the_eight_tags() {
    // A stand-in for /tmp (root's or ours, mode 1777) holding a clone whose
    // build directory, ours, holds the plugins, as `cargo build --release`
    // in a clone under /tmp leaves them; the private copies go where the
    // default does without a home, `<temp dir>/tag-server-plugins-<uid>`.
    let temp = tempfile::tempdir().unwrap();
    let shared = temp.path().join("tmp");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let release = shared.join("tag-engine").join("target").join("release");
    std::fs::create_dir_all(&release).unwrap();
    for dir in release.ancestors().take(3) {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for name in REFERENCE_PLUGINS {
        install(&release, &format!("libtag_plugin_{name}.so"), &plugin(name));
    }
    // SAFETY: geteuid has no preconditions.
    let copies = shared.join(format!("tag-server-plugins-{}", unsafe { libc::geteuid() }));
    let copies_arg = copies.display().to_string();
    let data = sample_data(50);
    let server = TestServer::start(
        data.path(),
        &release,
        &temp.path().join("t.db"),
        &["--plugin-copies-dir", &copies_arg],
    );
    let (_, listing) = server.get("/api/v1/plugins").unwrap();
    assert_eq!(
        (&listing["loaded"], &listing["rejected"]),
        (&serde_json::json!(5), &serde_json::json!(0)),
        "{listing}"
    );
    let ids: Vec<u64> = available_classes(&server).into_keys().collect();
    assert_eq!(ids, (1..=8).collect::<Vec<_>>());
    assert_eq!(server.get("/health").unwrap().1["status"], "healthy");
    assert!(
        copies.read_dir().unwrap().count() >= 5,
        "the copies are there"
    );
}

#[test]
fn an_executable_is_rejected_as_one_and_the_plugins_still_load() {
    // A small PIE executable (ET_DYN like a library) from the system: the
    // server's own binary would do but is hundreds of megabytes.
    let pie = Path::new("/usr/bin/true").to_path_buf();
    let is_pie = std::fs::read(&pie).is_ok_and(|b| b.get(16..18) == Some(&[3, 0][..]));
    if !is_pie {
        eprintln!("/usr/bin/true is not a PIE executable here: the case is not run");
        return;
    }
    let dir = plugins_dir(&[("server.so", pie), ("wealth.so", plugin("wealth"))]);
    let (registry, report) = load(dir.path());
    match rejection(&report, "server.so") {
        Rejection::NotALibrary(why) => assert!(why.contains("an executable"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(registry.ids(), vec![1, 6]);
    // A built plugin is a shared object and passes the ELF check.
    for name in REFERENCE_PLUGINS {
        let bytes = std::fs::read(plugin(name)).unwrap();
        assert_eq!(
            tag_plugin_loader::trust::check_elf(&bytes),
            Ok(()),
            "{name}"
        );
    }
}

#[test]
fn a_symlink_hop_through_a_world_writable_directory_is_rejected_before_loading() {
    let marker_dir = tempfile::tempdir().unwrap();
    let marker = marker_dir.path().join("constructor-ran");
    // plugins/ctor.so -> open/hop.so -> safe/ctor.so: the name's directory
    // and the target's are trusted, the middle hop's (0777) is not.
    let safe = plugins_dir(&[("ctor.so", fixture("constructor"))]);
    let open = plugins_dir(&[]);
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::os::unix::fs::symlink(safe.path().join("ctor.so"), open.path().join("hop.so")).unwrap();
    let linked = plugins_dir(&[]);
    std::os::unix::fs::symlink(open.path().join("hop.so"), linked.path().join("ctor.so")).unwrap();
    let (out, loaded) = list_with_marker(linked.path(), &marker);
    assert!(!loaded, "a rejected file was loaded: {out}");
    let open_shown = open.path().canonicalize().unwrap();
    assert!(
        out.contains(&format!(
            "{} is writable by group or others",
            open_shown.display()
        )),
        "{out}"
    );
}

#[test]
fn when_every_plugin_is_rejected_start_up_and_the_console_say_so() {
    let data = sample_data(100);
    let plugins = reference_plugins_dir();
    // Writable by anyone and not sticky: every file in it is rejected.
    std::fs::set_permissions(plugins.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let work = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_in(work.path(), data.path(), plugins.path(), &[]);
    let log = std::fs::read_to_string(work.path().join("server.log")).unwrap();
    let said = log
        .lines()
        .find(|l| l.contains("NO TAGS LOADED"))
        .unwrap_or_default();
    assert!(
        said.contains("ERROR")
            && said.contains("all 5 plugin files")
            && said.contains(&format!("`chmod go-w {}`", plugins.path().display()))
            && said.contains("/plugins"),
        "{log}"
    );
    let page = client()
        .get(format!("{}/", server.base))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let alert = page.split("class=\"alert\"").nth(1).unwrap_or_default();
    let alert = alert.split("</p>").next().unwrap_or_default();
    assert!(
        alert.contains("0 loaded, 5 rejected") && alert.contains("href=\"/plugins\""),
        "{page}"
    );
}
