//! Rule evaluation throughput: one numeric comparison over a 1M-row batch,
//! through the SDK evaluator and through the exported FFI adapter.
//!
//! `cargo bench -p tag-plugin-api --bench rule_eval`; criterion reports
//! elements (rows) per second.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use tag_plugin_api::abi::FfiBatch;
use tag_plugin_api::abi_stable::std_types::{RSlice, RStr};
use tag_plugin_api::owned::OwnedBatch;
use tag_plugin_api::{tag::export_tasks, Batch, ColumnType, Date, Rule, Schema, Tag, TagInfo};

const ROWS: usize = 1_000_000;
const RULE: &str = r#"{"field": "total_asset_value", "operator": ">=", "value": 150000}"#;

struct Threshold;
impl Tag for Threshold {
    fn info(&self) -> TagInfo {
        TagInfo::new(1, "Bench", "bench", "bench")
            .input("t", "total_asset_value", ColumnType::Float64)
            .default_rule(RULE)
    }
}

fn data() -> OwnedBatch {
    // A deterministic spread of values with 1% nulls.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let values: Vec<Option<f64>> = (0..ROWS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (!x.is_multiple_of(100)).then_some((x % 400_000) as f64)
        })
        .collect();
    OwnedBatch::new().float64("total_asset_value", &values)
}

fn bench(c: &mut Criterion) {
    let owned = data();
    let columns = owned.ffi_columns();
    let ffi = FfiBatch {
        num_rows: ROWS,
        columns: RSlice::from_slice(&columns),
    };
    let as_of = Date::parse("2024-06-30").expect("literal date");
    let mut group = c.benchmark_group("rule_eval_1m_rows");
    group.throughput(Throughput::Elements(ROWS as u64));

    let rule = Rule::parse(RULE).expect("bench rule parses");
    let batch = Batch::new(ffi).expect("bench batch is well formed");
    let compiled = rule
        .compile(&Schema::of_batch(&batch), as_of)
        .expect("bench rule fits");
    group.bench_function("compiled_ge_f64", |b| {
        b.iter(|| black_box(compiled.evaluate(black_box(&batch)).expect("evaluates")))
    });

    let tasks = export_tasks(|| vec![Box::new(Threshold)])
        .into_result()
        .expect("exports");
    let task = &tasks[0];
    group.bench_function("ffi_task_ge_f64", |b| {
        b.iter(|| {
            black_box(
                task.evaluate(black_box(ffi), RStr::from_str(RULE), as_of.days())
                    .into_result()
                    .expect("ok"),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
