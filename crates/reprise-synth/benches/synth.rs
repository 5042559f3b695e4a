//! Generation and fitting speed, each beside a baseline in the same run:
//!
//! - generation: requests/s generated and written to Parquet by `generate_to`, against the
//!   trace writer alone writing the same number of ready-made rows;
//! - fitting: seconds to read and fit a 10,000,000-request trace, against reading it alone.
//!
//! Run: `cargo bench -p reprise-synth --bench synth [-- --rows N]` (default 10,000,000).

use std::time::Instant;

use reprise_synth::generator::GenOptions;
use reprise_synth::model::FitOptions;
use reprise_synth::{Lengths, generate_to, load, model, plain_model};
use reprise_trace::{DatasetWriter, Output, Timestamp, TraceRecord, WriterOptions};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rows: u64 = args
        .iter()
        .position(|a| a == "--rows")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let dir = tempfile::tempdir().expect("dir");
    println!("# synth speed (2-core machine, one thread), {rows} requests\n");

    // Baseline: the writer alone, rows built in the loop as cheaply as possible.
    let start = Instant::now();
    let base_path = dir.path().join("baseline.parquet");
    let mut w =
        DatasetWriter::<TraceRecord>::create(Output::File(base_path), WriterOptions::default())
            .expect("writer");
    for i in 0..rows {
        let mut r = TraceRecord::new(format!("syn-{i:09}"), Timestamp(i as i64 * 1000));
        r.input_tokens = Some(1000);
        r.output_tokens = Some(200);
        w.write(&r).expect("write");
    }
    w.close().expect("close");
    let base = start.elapsed().as_secs_f64();

    // Generation: a plain Poisson model at a rate that gives `rows` in 1,000 s.
    let m = plain_model(
        rows as f64 / 1000.0,
        1.0,
        Lengths::Lognormal {
            mean: 1000.0,
            cv: 1.0,
        },
        Lengths::Lognormal {
            mean: 200.0,
            cv: 0.8,
        },
        1,
    )
    .expect("model");
    let path = dir.path().join("generated.parquet");
    let start = Instant::now();
    let s = generate_to(
        &m,
        &GenOptions {
            duration_s: Some(1000.0),
            ..GenOptions::default()
        },
        &path,
    )
    .expect("generate");
    let gen_s = start.elapsed().as_secs_f64();
    println!("| | rows | seconds | rows/s |\n|---|---:|---:|---:|");
    println!(
        "| trace writer alone (baseline) | {rows} | {base:.2} | {:.0} |",
        rows as f64 / base
    );
    println!(
        "| synth gen (draw + write) | {} | {gen_s:.2} | {:.0} |",
        s.requests,
        s.requests as f64 / gen_s
    );
    println!(
        "gen / writer alone: {:.2}\n",
        (s.requests as f64 / gen_s) / (rows as f64 / base)
    );

    // Fitting the generated trace.
    let start = Instant::now();
    let (loaded, block) = load(&path).expect("load");
    let read_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let fitted = model::fit(
        &loaded,
        &FitOptions {
            block_tokens: block,
            ..FitOptions::default()
        },
    )
    .expect("fit");
    let fit_s = start.elapsed().as_secs_f64();
    println!("| | seconds |\n|---|---:|");
    println!("| read {} rows (baseline) | {read_s:.2} |", loaded.len());
    println!("| fit after reading | {fit_s:.2} |");
    println!("| read + fit | {:.2} (target < 30) |", read_s + fit_s);
    println!(
        "fitted law: {} (CV {:.3}), mean rate {:.0} req/s",
        fitted.arrivals.law.name(),
        fitted.arrivals.law.cv(),
        fitted.arrivals.mean_rate
    );
}
