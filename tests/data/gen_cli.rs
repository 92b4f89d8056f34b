//! `tag-server gen-data` through the real binary: memory that does not grow
//! with the tables, the disk estimate, the refusal when space is short.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What one `tag-server gen-data` process did.
struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
    /// Its peak resident set size in bytes (the kernel's `ru_maxrss`).
    peak_rss: u64,
}

fn gen_data_command(work: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tag-server"));
    command
        .arg("gen-data")
        .args(args)
        .stdout(File::create(work.join("stdout")).unwrap())
        .stderr(File::create(work.join("stderr")).unwrap())
        .stdin(Stdio::null());
    command
}

/// Runs `tag-server gen-data ARGS` to its end, its output kept in `work`;
/// kills it and fails after two minutes (a gen-data that ignored its
/// limits would otherwise write until the disk is full).
// `wait4` reaps the child, which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn gen_data(work: &Path, args: &[&str]) -> Outcome {
    let mut child = gen_data_command(work, args).spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut status = 0;
    // SAFETY: polls our own child; `usage` is filled by the kernel.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        let waited = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        assert!(waited >= 0, "wait4: {}", std::io::Error::last_os_error());
        if waited == pid {
            break;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("gen-data {args:?} still running after 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let read = |name: &str| std::fs::read_to_string(work.join(name)).unwrap();
    Outcome {
        code: if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            -1
        },
        stdout: read("stdout"),
        stderr: read("stderr"),
        // Linux reports kilobytes.
        peak_rss: usage.ru_maxrss as u64 * 1024,
    }
}

const MIB: u64 = 1 << 20;

#[test]
fn memory_stays_flat_as_users_and_duplicates_grow() {
    let work = tempfile::tempdir().unwrap();
    let run = |users: &str, duplicates: &str| {
        let out = work.path().join(format!("{users}-{duplicates}"));
        let args = [
            "--users",
            users,
            "--duplicates",
            duplicates,
            "--out",
            out.to_str().unwrap(),
            "--reference-date",
            "2025-01-15",
            "--quiet",
        ];
        let outcome = gen_data(work.path(), &args);
        assert_eq!(outcome.code, 0, "{}{}", outcome.stdout, outcome.stderr);
        outcome.peak_rss
    };
    // One row group of 131,072 users, against four of users and four of
    // duplicates. A row group of the three tables takes about 37 MiB:
    // holding the users or the duplicates whole would take over 100 MiB
    // more; streamed, the peak is one row group's and stays put.
    let one_group = run("131072", "0");
    let eight_groups = run("524288", "524288");
    assert!(
        eight_groups <= one_group + 32 * MIB,
        "peak RSS {} MiB at 524,288 users and as many duplicates, {} MiB at 131,072 users",
        eight_groups / MIB,
        one_group / MIB
    );
}

#[test]
fn it_says_how_much_disk_it_needs_and_refuses_when_that_is_not_free() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("not-made");
    // A quadrillion users: about 85 PiB, more than any disk here.
    let args = [
        "--users",
        "1000000000000000",
        "--out",
        out.to_str().unwrap(),
    ];
    let refused = gen_data(work.path(), &args);
    assert_eq!(refused.code, 1, "{}{}", refused.stdout, refused.stderr);
    assert!(
        refused.stdout.starts_with("needs about ") && refused.stdout.contains(" PiB in "),
        "{}",
        refused.stdout
    );
    assert!(
        refused.stderr.contains("not enough free space in")
            && refused.stderr.contains("--force to write anyway"),
        "{}",
        refused.stderr
    );
    assert!(!out.exists(), "nothing may be written");

    // A size that fits: the estimate comes first, on stdout, then the
    // summary.
    let args = ["--users", "20000", "--out", out.to_str().unwrap()];
    let written = gen_data(work.path(), &args);
    assert_eq!(written.code, 0, "{}{}", written.stdout, written.stderr);
    let first = written.stdout.lines().next().unwrap();
    assert!(
        first.starts_with("needs about ") && first.contains(" free"),
        "{first}"
    );
    assert!(written
        .stdout
        .lines()
        .nth(1)
        .unwrap()
        .starts_with("wrote 20000 users"));
}

#[test]
fn force_writes_even_when_the_estimate_exceeds_the_free_space() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("forced");
    let args = [
        "--users",
        "1000000000000000",
        "--out",
        out.to_str().unwrap(),
        "--force",
        "--quiet",
    ];
    let mut child = gen_data_command(work.path(), &args).spawn().unwrap();
    // It writes: the first row group of the universe table lands on disk.
    let basic = out.join("user_basic_info.parquet");
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::metadata(&basic).map_or(0, |m| m.len()) < MIB {
        assert!(
            child.try_wait().unwrap().is_none(),
            "gen-data --force stopped: {}",
            std::fs::read_to_string(work.path().join("stderr")).unwrap()
        );
        assert!(Instant::now() < deadline, "no row group written in 120 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let stdout = std::fs::read_to_string(work.path().join("stdout")).unwrap();
    assert!(stdout.contains("--force: writing anyway"), "{stdout}");
}
