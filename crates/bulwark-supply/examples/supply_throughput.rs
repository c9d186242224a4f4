//! Hashing and scanning throughput on one file: `supply_throughput FILE [RUNS]`.
//! Prints one JSON line with the median over RUNS (default 5) of each.

use std::path::Path;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: supply_throughput FILE [RUNS]")?;
    let runs: usize = args.next().map_or(Ok(5), |r| r.parse())?;
    let path = Path::new(&path);
    let size = std::fs::metadata(path)?.len() as f64;
    let mut hash = Vec::new();
    let mut scan = Vec::new();
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        bulwark_supply::hash::file(path, &|_| {})?;
        hash.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let r = bulwark_supply::scan::file(path);
        scan.push(t.elapsed().as_secs_f64());
        if r.worst() == Some(bulwark_supply::Severity::High) {
            return Err(format!("{}: {:?}", path.display(), r.findings).into());
        }
    }
    let (h, s) = (median(hash), median(scan));
    println!(
        "{{\"hash_gbps\": {}, \"scan_gbps\": {}, \"scan_ms\": {}}}",
        size / h / 1e9,
        size / s / 1e9,
        s * 1e3
    );
    Ok(())
}
