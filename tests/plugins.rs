//! Loading real plugin libraries: the eight reference tags with their
//! metadata and default rules, and every kind of bad file reported precisely
//! while the rest still load.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use support::*;
use tag_host::plugins::{load_dir, LoadReport, Outcome, Rejection};
use tag_host::registry::{TagFailure, TagRegistry};
use tag_plugin_api::owned::OwnedBatch;
use tag_plugin_api::{ColumnType, Date};

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
    match rejection(&report, "e_wealth_copy.so") {
        Rejection::DuplicateTagId { tag_id, other } => {
            assert_eq!(*tag_id, 1);
            assert_eq!(other.file_name().unwrap(), "a_wealth.so");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        rejection(&report, "f_risk_world_writable.so"),
        &Rejection::WritableFile { mode: 0o757 }
    );
    assert!(matches!(
        rejection(&report, "h_garbage.so"),
        Rejection::NotALibrary(_)
    ));

    // Both files of the duplicate are named in the message a person reads.
    let text = report.to_string();
    let line = text
        .lines()
        .find(|l| l.contains("e_wealth_copy.so:"))
        .expect("duplicate reported");
    assert!(
        line.contains("duplicate tag id 1") && line.contains("a_wealth.so"),
        "{line}"
    );

    // The good files still loaded: wealth (1, 6), behavior (2, 8), lifecycle (4, 5).
    assert_eq!(registry.ids(), vec![1, 2, 4, 5, 6, 8]);
    assert_eq!(
        registry.get(1).unwrap().source.file_name().unwrap(),
        "a_wealth.so"
    );
}

#[test]
fn a_group_writable_directory_rejects_every_file() {
    let dir = reference_plugins_dir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o775)).unwrap();
    let (registry, report) = load(dir.path());
    assert!(registry.is_empty());
    assert_eq!(report.rejected().count(), 5);
    assert!(report
        .rejected()
        .all(|(_, r)| *r == Rejection::WritableDirectory { mode: 0o775 }));
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

    let (code, out, _) = tag_server(&[
        "plugins",
        "check",
        fixture("incompatible").to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("incompatible plugin-api version"), "{out}");
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
