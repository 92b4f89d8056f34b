//! Plugins under the server's allocator. `tag-server` allocates with
//! mimalloc; a plugin library is built on its own and allocates with the
//! system allocator. A block made by one and freed by the other is undefined
//! behaviour, so this checks that no value crossing the boundary is freed by
//! the side that did not make it.
//!
//! What crosses today (plugin-api/src/abi.rs), and who frees it:
//! - plugin to host, owned: the task list (`RVec<TagTaskBox>`), each task
//!   (`RBox` behind the trait object), its metadata (`FfiTagInfo`: `RString`s,
//!   `RVec<FfiInput>`), every mask (`FfiMask.words`, an `RVec<u64>`) and every
//!   error (`PluginError.message`, an `RString`). The host drops or converts
//!   them; abi_stable's drop, growth and `into_vec` go through the vtable the
//!   value carries, that is through the plugin's code and allocator (and
//!   `into_vec` copies when the vtable is another library's).
//! - host to plugin, borrowed only: the batch (`FfiBatch`: `RSlice`s of the
//!   host's column buffers) and the rule text (`RStr`). The plugin reads them
//!   during the call and frees nothing of the host's.
//!
//! This binary runs under mimalloc, as `tag-server` does, with a check on
//! every free: see [`CheckedMimalloc`].

mod support;

use std::alloc::{GlobalAlloc, Layout};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use support::*;
use tag_plugin_api::abi::{FfiMask, PluginErrorKind, TagPluginRef, TagTaskBox};
use tag_plugin_api::abi_stable::std_types::{RStr, RVec};
use tag_plugin_api::owned::OwnedBatch;
use tag_plugin_api::{Batch, ColumnType, Date, Input, Mask, Rule, TagInfo};
use tag_plugin_loader::{TagFailure, TagRegistry};

/// `tag-server`'s allocator (mimalloc) with one check: a block this process
/// frees or resizes must be one mimalloc handed out. A release mimalloc does
/// not look a freed pointer up safely, so freeing another allocator's block
/// need not crash at once; the check makes it visible instead: the block is
/// counted and leaked (never handed to mimalloc), and every test asserts the
/// count is still zero.
struct CheckedMimalloc;

#[global_allocator]
static ALLOCATOR: CheckedMimalloc = CheckedMimalloc;

/// Blocks this process tried to free or resize that mimalloc did not make.
static FOREIGN_BLOCKS: AtomicUsize = AtomicUsize::new(0);

/// Whether mimalloc made the block at `ptr` (its page map knows the page).
fn from_mimalloc(ptr: *const u8) -> bool {
    // SAFETY: a lookup in mimalloc's page map; it reads no memory at `ptr`.
    unsafe { libmimalloc_sys::mi_is_in_heap_region(ptr.cast()) }
}

// SAFETY: every call is mimalloc's, except that a block mimalloc does not
// own is never passed to it (leaked, or copied into a new mimalloc block).
unsafe impl GlobalAlloc for CheckedMimalloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        mimalloc::MiMalloc.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        mimalloc::MiMalloc.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if from_mimalloc(ptr) {
            mimalloc::MiMalloc.dealloc(ptr, layout);
        } else {
            FOREIGN_BLOCKS.fetch_add(1, Ordering::SeqCst);
        }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if from_mimalloc(ptr) {
            return mimalloc::MiMalloc.realloc(ptr, layout, new_size);
        }
        FOREIGN_BLOCKS.fetch_add(1, Ordering::SeqCst);
        let new =
            mimalloc::MiMalloc.alloc(Layout::from_size_align_unchecked(new_size, layout.align()));
        if !new.is_null() {
            std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
        }
        new
    }
}

fn assert_no_foreign_frees() {
    assert_eq!(
        FOREIGN_BLOCKS.load(Ordering::SeqCst),
        0,
        "the host freed or resized blocks its allocator did not make"
    );
}

fn as_of() -> Date {
    Date::parse("2025-01-15").unwrap()
}

/// Batch sizes cycled through: word boundaries of the mask, and sizes in
/// several of both allocators' size classes.
const ROWS: [usize; 9] = [1, 7, 63, 64, 65, 640, 1000, 4097, 20_000];

/// Rows large enough that the mask (150 KB) is above glibc's mmap threshold
/// (128 KiB): the plugin makes it with mmap and must unmap it.
const LARGE_ROWS: usize = 1_200_000;

/// A rule no tag accepts: its column is nobody's.
const BAD_RULE: &str = r#"{"field": "no_such_column", "operator": ">", "value": 1}"#;

/// A small deterministic generator (xorshift64*).
struct Draw(u64);

impl Draw {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// `None` one time in eight.
    fn maybe<T>(&mut self, value: impl FnOnce(&mut Draw) -> T) -> Option<T> {
        (!self.next().is_multiple_of(8)).then(|| value(self))
    }
}

/// A batch of `rows` rows for `inputs`, drawn from `seed`: numbers of three
/// magnitudes (so every reference threshold is crossed), recent and old
/// dates, the levels and statuses the rules name, one value in eight null.
fn batch_for(inputs: &[Input], rows: usize, seed: u64) -> OwnedBatch {
    let mut draw = Draw(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let today = as_of().days();
    let mut batch = OwnedBatch::new();
    for input in inputs {
        let name = input.column.as_str();
        let mut column = |f: &mut dyn FnMut(&mut Draw) -> u64| -> Vec<Option<u64>> {
            (0..rows).map(|_| draw.maybe(|d| f(d))).collect()
        };
        batch = match input.column_type {
            ColumnType::Float64 => {
                let v =
                    column(&mut |d| d.next() % [100, 100_000, 2_000_000][d.next() as usize % 3]);
                batch.float64(
                    name,
                    &v.iter().map(|v| v.map(|v| v as f64)).collect::<Vec<_>>(),
                )
            }
            ColumnType::Int32 => {
                let v = column(&mut |d| d.next() % 100);
                batch.int32(
                    name,
                    &v.iter().map(|v| v.map(|v| v as i32)).collect::<Vec<_>>(),
                )
            }
            ColumnType::Int64 => {
                let v = column(&mut |d| d.next() % 100);
                batch.int64(
                    name,
                    &v.iter().map(|v| v.map(|v| v as i64)).collect::<Vec<_>>(),
                )
            }
            ColumnType::Date => {
                let v = column(&mut |d| d.next() % 800);
                let days: Vec<_> = v
                    .iter()
                    .map(|v| v.map(|v| Date(today - v as i32)))
                    .collect();
                batch.dates(name, &days)
            }
            ColumnType::Timestamp => {
                let v = column(&mut |d| d.next() % 800);
                let micros =
                    |v: u64| i64::from(today - v as i32) * tag_plugin_api::date::MICROS_PER_DAY;
                batch.timestamp(name, &v.iter().map(|v| v.map(micros)).collect::<Vec<_>>())
            }
            ColumnType::Utf8 => {
                const WORDS: [&str; 7] = ["VIP1", "VIP2", "VIP3", "GOLD", "普通", "", "verified"];
                let v = column(&mut |d| d.next() % WORDS.len() as u64);
                batch.string(
                    name,
                    &v.iter()
                        .map(|v| v.map(|v| WORDS[v as usize]))
                        .collect::<Vec<_>>(),
                )
            }
            ColumnType::Boolean => {
                let v = column(&mut |d| d.next() & 1);
                batch.boolean(
                    name,
                    &v.iter().map(|v| v.map(|v| v == 1)).collect::<Vec<_>>(),
                )
            }
        };
    }
    batch
}

/// The mask `rule` gives `batch`, computed in the host with the same rule
/// language the reference plugins use (none overrides `evaluate`).
fn expected_mask(batch: &OwnedBatch, rule: &str) -> Mask {
    let rule = Rule::parse(rule).expect("a reference tag's rule parses");
    batch.with_ffi(|ffi| {
        rule.evaluate(&Batch::new(ffi).expect("well-formed batch"), as_of())
            .expect("the rule fits the batch")
    })
}

/// Opens a copy of `library` the way the host does and returns its tasks,
/// bypassing the registry so the test can look at the raw FFI values.
fn raw_tasks(library: &Path) -> (tempfile::TempDir, RVec<TagTaskBox>) {
    let dir = plugins_dir(&[("lib.so", library.to_path_buf())]);
    let header =
        tag_plugin_api::abi_stable::library::lib_header_from_path(&dir.path().join("lib.so"))
            .expect("a plugin library");
    let module = header
        .init_root_module::<TagPluginRef>()
        .expect("its root module");
    let tasks = (module.tasks())().into_result().expect("its tasks");
    (dir, tasks)
}

/// The task of `tasks` with this tag id.
fn task(tasks: &RVec<TagTaskBox>, tag_id: u32) -> &TagTaskBox {
    tasks
        .iter()
        .find(|t| t.info().tag_id == tag_id)
        .unwrap_or_else(|| panic!("tag {tag_id} is exported"))
}

#[test]
fn the_plugin_allocates_with_another_allocator_and_the_check_tells_them_apart() {
    // The check itself: a host block is mimalloc's, a malloc block is not.
    let host_block = Box::new([7u8; 64]);
    assert!(from_mimalloc(host_block.as_ptr()));
    // SAFETY: malloc and free of one block, nothing else.
    unsafe {
        let system_block = libc::malloc(64);
        assert!(!from_mimalloc(system_block.cast()));
        libc::free(system_block);
    }
    // A plugin's values are not mimalloc's: the two sides really differ,
    // so the other tests exercise frees across two allocators.
    let (_dir, tasks) = raw_tasks(&plugin("wealth"));
    let cash_rich = task(&tasks, 6);
    let info = cash_rich.info();
    assert!(!from_mimalloc(info.task_class.as_str().as_ptr()));
    assert!(!from_mimalloc(info.inputs.as_ptr().cast()));
    let inputs = TagInfo::from_ffi(&info).inputs;
    let batch = batch_for(&inputs, 1000, 1);
    let mask = batch.with_ffi(|ffi| {
        // What the host lends the plugin is the host's own memory.
        assert!(from_mimalloc(ffi.columns.as_ptr().cast()));
        cash_rich
            .evaluate(ffi, RStr::from_str(&info.default_rule), as_of().days())
            .into_result()
            .expect("evaluates")
    });
    assert!(!from_mimalloc(mask.words.as_ptr().cast()));
    let error = cash_rich
        .validate_rule(RStr::from_str(BAD_RULE))
        .unwrap_err();
    assert_eq!(error.kind, PluginErrorKind::InvalidRule);
    assert!(!from_mimalloc(error.message.as_str().as_ptr()));
    // Converting copies into the host's allocator; the plugin's block goes
    // back through the plugin's vtable.
    let words = mask.words.into_vec();
    assert!(from_mimalloc(words.as_ptr().cast()));
    let message = error.message.into_string();
    assert!(from_mimalloc(message.as_ptr()));
    drop((info, tasks));
    assert_no_foreign_frees();
}

/// One round of raw calls on `tasks` (wealth's tag 6 and the misbehaving
/// fixture's 901 to 903), treating each returned value one way or another
/// as the host may; the masks are checked against the host's own answer.
fn raw_round(
    wealth: &RVec<TagTaskBox>,
    fixture: &RVec<TagTaskBox>,
    i: usize,
    dropper: &std::sync::mpsc::Sender<FfiMask>,
) {
    let cash_rich = task(wealth, 6);
    let info = TagInfo::from_ffi(&cash_rich.info());
    let rows = if i % 1000 == 999 {
        LARGE_ROWS
    } else {
        ROWS[i % ROWS.len()]
    };
    let batch = batch_for(&info.inputs, rows, i as u64);
    let call = |t: &TagTaskBox, rule: &str| {
        batch.with_ffi(|ffi| {
            t.evaluate(ffi, RStr::from_str(rule), as_of().days())
                .into_result()
        })
    };
    let mut mask = call(cash_rich, &info.default_rule).expect("tag 6 evaluates");
    assert_eq!(
        Mask::from_ffi(mask.clone()).unwrap().words(),
        expected_mask(&batch, &info.default_rule).words()
    );
    match i % 3 {
        // Dropped on another thread, as a mask finished on a worker may be.
        0 => dropper.send(mask).expect("dropper thread"),
        // Grown by the host: through the plugin's vtable, in its allocator.
        1 => {
            mask.words.extend((0..5000).map(|w| w as u64));
            assert!(!from_mimalloc(mask.words.as_ptr().cast()));
        }
        // Converted: copied into the host's allocator, then dropped there.
        _ => drop(Mask::from_ffi(mask).expect("a whole mask")),
    }
    let error = cash_rich
        .validate_rule(RStr::from_str(BAD_RULE))
        .unwrap_err();
    assert!(
        error.message.contains("no_such_column"),
        "{}",
        error.message
    );
    let failed = call(task(fixture, 902), &info.default_rule).unwrap_err();
    assert_eq!(failed.kind, PluginErrorKind::Evaluation);
    let long = call(task(fixture, 903), &info.default_rule).expect("903 answers");
    assert_eq!(long.len, rows + 1);
    // Panics print a report each: a few dozen are enough.
    if i.is_multiple_of(100) {
        let panicked = call(task(fixture, 901), &info.default_rule).unwrap_err();
        assert_eq!(
            (panicked.kind, panicked.message.as_str()),
            (PluginErrorKind::Panic, "fixture tag 901 always panics")
        );
    }
}

#[test]
fn thousands_of_masks_and_errors_made_by_plugins_are_freed_by_them() {
    let (_w, wealth) = raw_tasks(&plugin("wealth"));
    let (_f, fixture) = raw_tasks(&fixture("misbehaving"));
    let (dropper, masks) = std::sync::mpsc::channel::<FfiMask>();
    let dropping = std::thread::spawn(move || masks.into_iter().count());
    for i in 0..3000 {
        raw_round(&wealth, &fixture, i, &dropper);
    }
    drop(dropper);
    assert_eq!(dropping.join().unwrap(), 1000);
    // The task objects themselves: the host drops them, their vtable frees.
    drop((wealth, fixture));
    assert_no_foreign_frees();
}

/// Every reference tag and the three misbehaving ones that return, on
/// `rounds` batches, through the host's own calls (`RegisteredTag`).
fn registry_rounds(registry: &TagRegistry, thread: usize, rounds: usize) -> usize {
    let mut calls = 0;
    for round in 0..rounds {
        let rows = ROWS[(round + thread) % ROWS.len()];
        for id in 1..=8 {
            let tag = registry.get(id).expect("reference tag");
            let rule = &tag.info.default_rule;
            let batch = batch_for(
                &tag.info.inputs,
                rows,
                (thread * rounds + round) as u64 * 8 + u64::from(id),
            );
            let mask = batch
                .with_ffi(|ffi| tag.evaluate(ffi, rule, as_of()))
                .expect("evaluates");
            assert_eq!(
                mask.words(),
                expected_mask(&batch, rule).words(),
                "tag {id}, {rows} rows"
            );
            let refused = tag.validate_rule(BAD_RULE);
            assert!(
                matches!(refused, Err(TagFailure::InvalidRule { .. })),
                "{refused:?}"
            );
            calls += 2;
        }
        let batch = batch_for(&registry.get(902).unwrap().info.inputs, rows, round as u64);
        for id in [902, 903] {
            let tag = registry.get(id).expect("fixture tag");
            let outcome = batch.with_ffi(|ffi| tag.evaluate(ffi, &tag.info.default_rule, as_of()));
            match (id, outcome) {
                (902, Err(TagFailure::PluginError { message, .. })) => {
                    assert!(message.contains("always fails"))
                }
                (903, Err(TagFailure::WrongMaskLength { returned, .. })) => {
                    assert_eq!(returned, rows + 1)
                }
                (_, other) => panic!("tag {id}: {other:?}"),
            }
            calls += 1;
        }
    }
    calls
}

#[test]
fn thousands_of_batches_through_the_registry_on_several_threads() {
    let dir = plugins_dir(&[
        ("wealth.so", plugin("wealth")),
        ("behavior.so", plugin("behavior")),
        ("risk.so", plugin("risk")),
        ("lifecycle.so", plugin("lifecycle")),
        ("demographic.so", plugin("demographic")),
        ("misbehaving.so", fixture("misbehaving")),
    ]);
    // Loaded and dropped a few times: each load takes the task list and the
    // metadata from the plugin, each drop hands the tasks back to it.
    for _ in 0..3 {
        let (registry, report) = tag_host::plugins::load_dir(dir.path()).expect("loads");
        assert_eq!(report.rejected().count(), 0, "{report}");
        drop(registry);
    }
    let (registry, _) = tag_host::plugins::load_dir(dir.path()).expect("loads");
    let calls: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|thread| {
                let registry = &registry;
                scope.spawn(move || registry_rounds(registry, thread, 250))
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    assert_eq!(calls, 4 * 250 * (8 * 2 + 2));
    drop(registry);
    assert_no_foreign_frees();
}

#[test]
fn tag_server_computes_every_reference_tag_over_thousands_of_batches() {
    // The real binary, whose global allocator is mimalloc: 64-row batches
    // make about 780 masks per tag, 6,300 in all, each freed by the plugin.
    let data = sample_data(50_000);
    let plugins = plugins_dir(&[
        ("wealth.so", plugin("wealth")),
        ("behavior.so", plugin("behavior")),
        ("risk.so", plugin("risk")),
        ("lifecycle.so", plugin("lifecycle")),
        ("demographic.so", plugin("demographic")),
        ("misbehaving.so", fixture("misbehaving")),
    ]);
    let db = data.path().join("t.db");
    let store = format!("sqlite://{}", db.display());
    let common = [
        "--data-dir",
        data.path().to_str().unwrap(),
        "--plugins-dir",
        plugins.path().to_str().unwrap(),
        "--store",
        &store,
        "--batch-rows",
        "64",
        "--as-of",
        "2025-01-15",
    ];
    let run = |tags: &str| {
        let (code, out, err) = tag_server(&[&["run", "--tag-ids", tags][..], &common[..]].concat());
        let task: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
        (code, task)
    };
    let (code, task) = run("1,2,3,4,5,6,7,8");
    assert_eq!(
        (code, &task["status"]),
        (0, &serde_json::json!("completed")),
        "{task}"
    );
    let all: Vec<u32> = (1..=8).collect();
    assert_same_tags(
        &user_tags(&db),
        &oracle::expected(data.path(), as_of().days(), &all),
    );
    // The error and panic paths: the plugin's message reaches the task.
    for (tags, says) in [("902", "always fails"), ("901", "always panics")] {
        let (code, task) = run(tags);
        assert_ne!(code, 0, "{task}");
        assert_eq!(task["status"], "failed", "{task}");
        assert!(task["error"].as_str().unwrap().contains(says), "{task}");
    }
    assert_no_foreign_frees();
}
