//! How fast JSON bodies are masked, against serde_json reading and writing the same document:
//! `cargo run --release -p gatehouse-mask --example json_throughput [FILE] [ROUNDS]`. Without a
//! file it masks a list of 20 customers with an email address each, as `bench/http.sh` serves.
//! Run by `bench/mask.sh`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_mask::{Detector, JsonMasker, Masker};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let doc = match args.next() {
        Some(path) if path != "-" => std::fs::read(path)?,
        _ => customers(),
    };
    let rounds: u32 = args.next().map(|r| r.parse()).transpose()?.unwrap_or(20_000);
    let email = JsonMasker::new(Some(Arc::new(Masker::new(&[Detector::Email], &[])?)), Vec::new());
    let every = JsonMasker::new(Some(Arc::new(Masker::builtin()?)), Vec::new());
    let plain = JsonMasker::new(None, Vec::new());
    println!("document: {} bytes, {rounds} rounds each", doc.len());
    let serde = time(rounds, || {
        let v: serde_json::Value = serde_json::from_slice(&doc).map_err(|e| e.to_string())?;
        serde_json::to_vec(&v).map(|out| out.len()).map_err(|e| e.to_string())
    })?;
    report("serde_json read and write (baseline)", serde, serde, doc.len());
    for (name, m) in
        [("streamed, no detectors", &plain), ("streamed, email", &email), ("streamed, every detector", &every)]
    {
        let t = time(rounds, || {
            m.mask(&doc).map(|(out, tally)| out.len() + tally.total() as usize).map_err(|e| e.to_string())
        })?;
        report(name, t, serde, doc.len());
    }
    Ok(())
}

/// The time per round of `f`, the best of five batches.
fn time(rounds: u32, mut f: impl FnMut() -> Result<usize, String>) -> Result<Duration, String> {
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        for _ in 0..rounds / 5 {
            black_box(f()?);
        }
        best = best.min(started.elapsed() / (rounds / 5).max(1));
    }
    Ok(best)
}

fn report(name: &str, t: Duration, baseline: Duration, len: usize) {
    let mb_s = len as f64 / t.as_secs_f64() / 1e6;
    let ratio = t.as_secs_f64() / baseline.as_secs_f64();
    println!("{name:<40} {:>9.2} us  {mb_s:>7.1} MB/s  {ratio:>5.2}x baseline", t.as_secs_f64() * 1e6);
}

fn customers() -> Vec<u8> {
    let list: Vec<String> = (0..20)
        .map(|i| format!(r#"{{"id": {i}, "name": "Customer {i}", "email": "user{i}@example.com", "city": "Oslo"}}"#))
        .collect();
    format!(r#"{{"customers": [{}], "total": 20}}"#, list.join(", ")).into_bytes()
}
