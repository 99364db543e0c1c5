//! The per-record cost of Causeway's record filters, WebAssembly against native.
//!
//! For each example plugin (pass-through, PII masking) and batch size, three
//! numbers from one run, each the median of several timed samples:
//!
//! - **native**: the plugin's own source, compiled into this binary, reading
//!   the same record bytes through the same SDK: the cost of the logic alone;
//! - **wasm call**: the same source as a component in Causeway's plugin host
//!   (wasmtime, pooling allocator, epoch deadline): records copied into the
//!   sandbox, the plugin run, verdicts copied back;
//! - **gateway path**: what the produce path does per batch: read the Kafka
//!   record batch, run the component, apply verdicts and, when a record
//!   changed, write the batch again;
//! - **wasm, no deadline** (for reference only; the gateway always has one):
//!   the wasm call compiled without the checks of the per-call CPU deadline,
//!   which shows what those checks cost.
//!
//! ```text
//! plugin-cost --components DIR [--out FILE] [--sample-ms N] [--only PLUGIN]
//! ```

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::{Bytes, BytesMut};
use causeway::plugins::batches;
use causeway::plugins::filter::{self as host, Filter, FilterChain};
use causeway::plugins::PluginConfig;
use causeway_plugin_sdk as sdk;
use causeway_plugin_sdk::RecordFilter;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const BATCH_SIZES: [usize; 4] = [1, 100, 500, 1000];
const SAMPLES: usize = 7;
const PII_CONFIG: &str = r#"{"fields": ["email"], "detect": ["card"]}"#;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut components: Option<PathBuf> = None;
    let mut out: Option<PathBuf> = None;
    let mut sample = Duration::from_millis(150);
    let mut only: Option<String> = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--components" => components = args.next().map(PathBuf::from),
            "--out" => out = args.next().map(PathBuf::from),
            "--only" => only = args.next(),
            "--sample-ms" => {
                let ms: u64 = args.next().context("--sample-ms needs a number")?.parse()?;
                sample = Duration::from_millis(ms.max(1));
            }
            other => bail!("unknown argument {other:?}; see the top of benches/plugin-cost/src/main.rs"),
        }
    }
    let components = components.context("--components DIR (where scripts/build-plugins.sh put the .wasm files)")?;

    let engine = causeway::plugins::engine(64)?;
    let no_deadline = causeway::plugins::engine_without_deadline(64)?;
    let load = |engine: &causeway::plugins::Engine, name: &str, config: &str| -> anyhow::Result<Filter> {
        let path = components.join(format!("{name}.wasm"));
        if !path.is_file() {
            bail!("{} is missing; run scripts/build-plugins.sh", path.display());
        }
        let config = PluginConfig {
            name: name.into(),
            kind: "record-filter".into(),
            path: path.to_string_lossy().into_owned(),
            config: config.into(),
            on: Some(vec!["produce".into()]),
            topics: "*".into(),
            clusters: Vec::new(),
            principals: Vec::new(),
            on_error: "reject".into(),
            memory_mb: 64,
            timeout_ms: 1000,
        };
        Filter::load(engine, &config)
    };

    let mut rows = Vec::new();
    for size in BATCH_SIZES {
        let kafka = kafka_records(size);
        let batch = encode(&kafka)?;
        if causeway::codec::batches::headers(&batch).count() != 1 {
            bail!("the benchmark's {size} records did not encode as one batch");
        }
        let sections = batches::sections(&batch, host::Direction::Produce, batches::MAX_RECORD_BYTES)?;
        let wit: Vec<host::RecordBatch> = batches::as_wit(&sections);
        // The same bytes the component gets, as the SDK hands them to a filter.
        let native_batches: Vec<sdk::RecordBatch> = wit
            .iter()
            .map(|b| sdk::RecordBatch {
                base_offset: b.base_offset,
                base_timestamp: b.base_timestamp,
                count: b.count,
                records: b.records.to_vec(),
            })
            .collect();
        let native = read_all(&native_batches);
        if native.len() != size {
            bail!("the SDK read {} of {size} records", native.len());
        }
        let host_ctx = host::BatchContext {
            direction: host::Direction::Produce,
            topic: "payments",
            cluster: "main",
            partition: 0,
            principal: "ANONYMOUS",
            client_id: "bench",
        };
        let sdk_ctx = sdk::BatchContext::produce("payments").with_client_id("bench");

        for plugin in ["passthrough", "pii-mask"] {
            if only.as_deref().is_some_and(|o| o != plugin) {
                continue;
            }
            let config = if plugin == "pii-mask" { PII_CONFIG } else { "" };
            let filter = load(&engine, plugin, config)?;
            let bare = load(&no_deadline, plugin, config)?;
            // The answers must agree before their costs are compared.
            let wasm_verdicts: Vec<host::Verdict> = match filter.call(&host_ctx, &wit) {
                Ok(Ok(Some(v))) => v,
                Ok(Ok(None)) => vec![host::Verdict::Pass; size],
                Ok(Err(rejected)) => bail!("{plugin} rejected the batch: {rejected}"),
                Err(failed) => bail!("{plugin} failed: {failed}"),
            };
            let native_ns = match plugin {
                "passthrough" => {
                    let mut f = passthrough::Passthrough::init(config).map_err(anyhow::Error::msg)?;
                    check_same(plugin, &wasm_verdicts, &f.filter(&sdk_ctx, &native))?;
                    per_record(sample, size, || {
                        let records = read_all(black_box(&native_batches));
                        black_box(f.filter(&sdk_ctx, &records).ok());
                    })
                }
                _ => {
                    let mut f = pii_mask::PiiMask::init(config).map_err(anyhow::Error::msg)?;
                    check_same(plugin, &wasm_verdicts, &f.filter(&sdk_ctx, &native))?;
                    per_record(sample, size, || {
                        let records = read_all(black_box(&native_batches));
                        black_box(f.filter(&sdk_ctx, &records).ok());
                    })
                }
            };
            let mut failed = 0u64;
            let wasm_ns = per_record(sample, size, || {
                if !matches!(filter.call(&host_ctx, black_box(&wit)), Ok(Ok(_))) {
                    failed += 1;
                }
            });
            let bare_ns = per_record(sample, size, || {
                if !matches!(bare.call(&host_ctx, black_box(&wit)), Ok(Ok(_))) {
                    failed += 1;
                }
            });
            if failed > 0 {
                bail!("{plugin}: {failed} calls failed while timing");
            }
            let mut chain = FilterChain::default();
            chain.push(filter);
            let path_ns = per_record(sample, size, || {
                black_box(chain.run(&host_ctx, black_box(&batch)));
            });
            let unfiltered_ns = per_record(sample, size, || {
                black_box(batches::sections(black_box(&batch), host::Direction::Produce, batches::MAX_RECORD_BYTES).ok());
            });
            rows.push(Row {
                plugin,
                size,
                native_ns,
                wasm_ns,
                path_ns,
                decode_ns: unfiltered_ns,
                bare_ns,
            });
        }
    }

    let report = report(&rows);
    print!("{report}");
    if let Some(out) = out {
        let mut text = std::fs::read_to_string(&out).unwrap_or_default();
        text.push_str(&report);
        std::fs::write(&out, text).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

struct Row {
    plugin: &'static str,
    size: usize,
    native_ns: f64,
    wasm_ns: f64,
    path_ns: f64,
    decode_ns: f64,
    bare_ns: f64,
}

fn report(rows: &[Row]) -> String {
    let mut s = String::new();
    s.push_str("| plugin | batch | native ns/rec | wasm call ns/rec | wasm / native | gateway path ns/rec | of which reading the batch | wasm, no deadline ns/rec | its / native |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | {:.2}x | {:.0} | {:.0} | {:.0} | {:.2}x |\n",
            r.plugin,
            r.size,
            r.native_ns,
            r.wasm_ns,
            r.wasm_ns / r.native_ns.max(0.1),
            r.path_ns,
            r.decode_ns,
            r.bare_ns,
            r.bare_ns / r.native_ns.max(0.1),
        ));
    }
    s.push('\n');
    let find = |plugin: &str, size: usize| rows.iter().find(|r| r.plugin == plugin && r.size == size);
    if let Some(r) = find("passthrough", 500) {
        s.push_str(&format!(
            "- pass-through, batch 500, wasm call: {:.0} ns/record (target <= 100): {}\n",
            r.wasm_ns,
            verdict(r.wasm_ns <= 100.0)
        ));
    }
    for size in BATCH_SIZES.into_iter().filter(|&n| n >= 100) {
        if let Some(r) = find("pii-mask", size) {
            s.push_str(&format!(
                "- PII masking, batch {size}: wasm {:.2}x native (target <= 2x): {}; without the CPU deadline's checks {:.2}x\n",
                r.wasm_ns / r.native_ns.max(0.1),
                verdict(r.wasm_ns <= 2.0 * r.native_ns),
                r.bare_ns / r.native_ns.max(0.1),
            ));
        }
    }
    s.push('\n');
    s
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

/// Median nanoseconds per record of `f` (one call handles `records`).
fn per_record(sample: Duration, records: usize, mut f: impl FnMut()) -> f64 {
    // Warm up, and find how many calls fill one sample.
    let started = Instant::now();
    let mut calls = 0u64;
    while started.elapsed() < sample / 2 || calls < 3 {
        f();
        calls += 1;
    }
    let per_call = started.elapsed().as_secs_f64() / calls as f64;
    let iterations = ((sample.as_secs_f64() / per_call) as u64).max(3);
    let mut samples: Vec<f64> = (0..SAMPLES)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iterations {
                f();
            }
            t.elapsed().as_nanos() as f64 / (iterations as f64 * records as f64)
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[SAMPLES / 2]
}

/// Payment events: a JSON object with an e-mail and a card number to mask,
/// about 200 bytes, a key, and one header.
fn kafka_records(n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| {
            let value = format!(
                r#"{{"id":{i},"customer":{{"name":"Customer {i}","email":"customer{i}@example.com"}},"card":"4111 1111 1111 1111","amount":{}.{:02},"currency":"EUR","note":"order {i} of the benchmark"}}"#,
                10 + i % 90,
                i % 100
            );
            let headers = vec![("source".into(), Some(Bytes::from_static(b"bench")))];
            Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                // As decoded from one batch without a producer id (base
                // sequence -1): the encoder keeps such records in one batch.
                sequence: (i as i32).wrapping_sub(1),
                timestamp: 1_700_000_000_000 + i as i64,
                key: Some(Bytes::from(format!("customer-{i}"))),
                value: Some(Bytes::from(value)),
                headers,
            }
        })
        .collect()
}

fn encode(records: &[Record]) -> anyhow::Result<Bytes> {
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buf, records.iter(), &options)?;
    Ok(buf.freeze())
}

/// The records of `batches` as the SDK hands them to a filter.
fn read_all(batches: &[sdk::RecordBatch]) -> Vec<sdk::Record<'_>> {
    match batches {
        [one] => sdk::testing::read_batch(one).unwrap_or_default(),
        _ => batches
            .iter()
            .flat_map(|b| sdk::testing::read_batch(b).unwrap_or_default())
            .collect(),
    }
}

/// Fails unless the component and the native build gave the same verdicts.
fn check_same(
    plugin: &str,
    wasm: &[host::Verdict],
    native: &Result<Vec<sdk::Verdict>, String>,
) -> anyhow::Result<()> {
    let native = native.as_ref().map_err(|e| anyhow::anyhow!("native {plugin}: {e}"))?;
    let same = wasm.len() == native.len()
        && wasm.iter().zip(native).all(|(w, n)| match (w, n) {
            (host::Verdict::Pass, sdk::Verdict::Pass) | (host::Verdict::Drop, sdk::Verdict::Drop) => true,
            (host::Verdict::Replace(w), sdk::Verdict::Replace(n)) => w.value == n.value && w.key == n.key,
            (host::Verdict::ReplaceValue(w), sdk::Verdict::ReplaceValue(n)) => w == n,
            _ => false,
        });
    if !same {
        bail!("{plugin}: the component and the native build disagree on the verdicts");
    }
    Ok(())
}
