//! `bench-maglev`: how long the daemon's Maglev builder
//! (`dataplane_user::bpf::maglev`) takes to rebuild one service's lookup
//! table of `MAGLEV_M` entries, for 3, 100 and 1,000 replicas. Run by
//! `cargo xtask bench --setups services` (built with `--features prog`);
//! prints JSON. Needs neither root nor the kernel.

use anyhow::Result;
use clap::Parser;
use dataplane_common::MAGLEV_M;
use dataplane_user::bpf::maglev;
use serde::Serialize;

#[derive(Parser)]
struct Args {
    /// Builds per replica count (each timed alone); median, min and max.
    #[arg(long, default_value_t = 31)]
    builds: usize,
    /// Replica counts (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [3usize, 100, 1000])]
    replicas: Vec<usize>,
}

#[derive(Serialize)]
struct Row {
    replicas: usize,
    median_us: f64,
    min_us: f64,
    max_us: f64,
}

#[derive(Serialize)]
struct Out {
    table_size: u32,
    builds: usize,
    rows: Vec<Row>,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let mut rows = Vec::new();
    for &n in &a.replicas {
        // One build per call: its own time, not a median of a batch.
        let mut us: Vec<f64> = (0..a.builds.max(1))
            .map(|_| maglev::time_build(n, MAGLEV_M, 1).map(|d| d.as_secs_f64() * 1e6))
            .collect::<Result<_>>()?;
        us.sort_by(f64::total_cmp);
        rows.push(Row {
            replicas: n,
            median_us: us[us.len() / 2],
            min_us: us[0],
            max_us: us[us.len() - 1],
        });
    }
    println!(
        "{}",
        serde_json::to_string(&Out {
            table_size: MAGLEV_M,
            builds: a.builds.max(1),
            rows,
        })?
    );
    Ok(())
}
