//! `TraceStats` make function: reads a recording's trace from the object store, writes results
//! there and in the row.
//!
//! ```text
//! lab.Trace(trace_id int32; trace <blob@store>, gain <blob>)              [manual]
//! lab.TraceStats(-> Trace; n int64, mean float64, peak float64,
//!                centered <blob@store>, summary <blob>, report <object@store>) [computed]
//! lab.TraceStats.Window(-> master, window int32; energy float64,
//!                       samples <npy@store>)                              [part]
//! ```
//!
//! `trace` is a float64 array (any shape) that datajoint-python or SQL stored; `gain` a scalar
//! float64 array in the row. The make streams the trace in (a `<blob@store>` is read in chunks
//! and decoded), writes the gain-scaled, mean-centred trace back as a `<blob@store>` of the same
//! shape, a small struct-free summary array as an in-row `<blob>`, a text report as an
//! `<object@store>` written through `std::io::Write`, and per window of 65 536 samples a part row
//! whose samples are a `<npy@store>` array. datajoint-python fetches all of it.

use std::io::Write;

use datajoint_make::blob::{Array, Value as Blob};
use datajoint_make::objects::{self, put_blob, Upload};
use datajoint_make::{fetch1, insert1, Key, Make, Query};

struct TraceStats;

const WINDOW: usize = 65_536;

impl Make for TraceStats {
    fn make(key: Key) -> Result<(), String> {
        let row = fetch1(Query::new("Trace").attributes(["trace", "gain"]));
        let (shape, trace) = row.array::<f64>("trace")?;
        let (_, gain) = row.array::<f64>("gain")?;
        let gain = *gain.first().ok_or("gain is empty")?;
        let n = trace.len();
        if n == 0 {
            return Err("the trace is empty".into());
        }
        let mean = trace.iter().sum::<f64>() / n as f64;
        let peak = trace.iter().fold(f64::NEG_INFINITY, |m, x| m.max(*x));
        let centered: Vec<f64> = trace.iter().map(|x| (x - mean) * gain).collect();

        let centered_blob = Array::from_values(shape.clone(), &centered).ok_or("shape mismatch")?;
        let centered_ref = put_blob("TraceStats", "centered", &key, &Blob::Array(centered_blob))?;
        let summary = Array::from_values(vec![1, 3], &[n as f64, mean, peak]).ok_or("summary")?;
        let summary_bytes = objects::encode_blob(&Blob::Array(summary))?;

        let mut report = Upload::new("TraceStats", "report", &key, Some("report.txt"));
        writeln!(report, "trace {key}: {n} samples, shape {shape:?}").map_err(|e| e.to_string())?;
        writeln!(report, "mean {mean}\npeak {peak}\ngain {gain}").map_err(|e| e.to_string())?;
        let report_ref = report.finish();

        insert1(
            "TraceStats",
            key.clone()
                .with("n", n as i64)
                .with("mean", mean)
                .with("peak", peak)
                .with("centered", centered_ref)
                .with("summary", summary_bytes)
                .with("report", report_ref),
        );
        for (i, window) in centered.chunks(WINDOW).enumerate() {
            let part_key = key.clone().with("window", i as i32);
            let samples = objects::put("Window", "samples", &part_key, None, &npy_f64(window));
            let energy = window.iter().map(|x| x * x).sum::<f64>();
            insert1("Window", part_key.with("energy", energy).with("samples", samples));
        }
        Ok(())
    }
}

/// A 1-d float64 array in numpy's .npy format (version 1.0).
fn npy_f64(values: &[f64]) -> Vec<u8> {
    let mut header = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': ({},), }}", values.len());
    // Magic (6) + version (2) + length (2) + header + newline: a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + values.len() * 8);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

datajoint_make::export!(TraceStats);
