//! What writing one drop line costs, for `cargo xtask bench` (P6): from a flow's template
//! (every drop of a storm after the flow's first) and through serde from a record (the
//! first), JSON and human, in ns per line. Prints JSON.
use std::{io::BufWriter, time::Instant};

use serde_json::json;
use tracer::report::{
    fastline::{Template, TimeText, Vars, sample_record},
    output::{Format, Printer},
};

const LINES: u64 = 400_000;

fn vars(i: u64) -> Vars {
    Vars {
        wall_ns: 1_764_150_062_000_000_000 + (i as i64) * 3_000,
        sport: 40000 + (i % 20000) as u16,
        dport: 5000,
        len: 60,
    }
}

/// ns per line of `write`.
fn per_line(mut write: impl FnMut(u64)) -> f64 {
    let started = Instant::now();
    for i in 0..LINES {
        write(i);
    }
    started.elapsed().as_nanos() as f64 / LINES as f64
}

/// What `watch` writes into: a 64 KiB buffer (here in front of nothing).
fn output() -> BufWriter<std::io::Sink> {
    BufWriter::with_capacity(1 << 16, std::io::sink())
}

fn main() {
    let rec = tracer::observe::event::DropRecord {
        sport: 40000,
        dport: 5000,
        len: 60,
        ..sample_record()
    };
    let mut result = serde_json::Map::new();
    for (name, format) in [("json", Format::Json), ("human", Format::Human)] {
        let template = match format {
            Format::Json => Template::json(&rec).expect("a JSON template"),
            _ => Template::human(&rec),
        };
        let (mut clock, mut scratch, mut out) = (TimeText::default(), Vec::new(), output());
        let templated = per_line(|i| {
            let _ = template.write(&mut out, &vars(i), &mut clock, &mut scratch);
        });
        let (mut r, mut printer) = (rec.clone(), Printer::new(output(), format));
        let from_record = per_line(|i| {
            let v = vars(i);
            // The record path formats its time into a new String, as `Namer` does.
            r.time = format!("2026-11-26T11:04:49.{:09}Z", v.wall_ns % 1_000_000_000);
            r.sport = v.sport;
            let _ = printer.drop_line(&r);
        });
        result.insert(
            name.into(),
            json!({"ns_per_line_templated": templated, "ns_per_line_from_record": from_record}),
        );
    }
    result.insert("target_ns_per_line".into(), json!(500));
    println!("{}", serde_json::Value::Object(result));
}
