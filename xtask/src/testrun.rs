//! `cargo xtask test`: setup, build, then every test suite, streaming their
//! output and counting the `test result:` lines into one summary. The test
//! steps use `--no-fail-fast` so one failing test binary does not hide the
//! results of the others.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

use crate::{cargo, setup, sh, target_dir, Progress};

/// The whole run stays under this, well inside a 90-minute CI budget.
const BUDGET: Duration = Duration::from_secs(80 * 60);

#[derive(Default, Debug, PartialEq, Eq)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
}

/// Parses `test result: ok. 3 passed; 1 failed; 0 ignored; ...`.
pub fn parse_result_line(line: &str) -> Option<Counts> {
    let rest = &line[line.find("test result:")? + "test result:".len()..];
    let mut c = Counts::default();
    for part in rest.split(';') {
        let words: Vec<&str> = part.split_whitespace().collect();
        for w in words.windows(2) {
            match (w[0].parse::<u64>(), w[1]) {
                (Ok(n), "passed") => c.passed = n,
                (Ok(n), "failed") => c.failed = n,
                _ => {}
            }
        }
    }
    Some(c)
}

struct StepResult {
    name: String,
    ok: bool,
    detail: String,
    counts: Counts,
}

fn step(
    p: &mut Progress,
    name: &str,
    mut c: Command,
    deadline: Instant,
    limit: Duration,
) -> StepResult {
    p.step(name);
    let left = deadline
        .saturating_duration_since(Instant::now())
        .min(limit);
    let mut counts = Counts::default();
    let started = Instant::now();
    let res = sh::stream(&mut c, Some(left), |line| {
        if let Some(r) = parse_result_line(line) {
            counts.passed += r.passed;
            counts.failed += r.failed;
        }
    });
    let secs = started.elapsed().as_secs();
    let (ok, detail) = match res {
        Ok(st) if st.success() => (true, format!("{secs} s")),
        Ok(st) => (false, format!("{st}, {secs} s")),
        Err(e) => (false, format!("{e:#}")),
    };
    StepResult {
        name: name.to_string(),
        ok,
        detail,
        counts,
    }
}

pub fn test() -> Result<i32> {
    let deadline = Instant::now() + BUDGET;
    let mut p = Progress::new(8);
    setup::setup(&mut p)?;
    let mins = |m: u64| Duration::from_secs(m * 60);
    let mut results = Vec::new();

    let mut build = cargo();
    build.args(["build", "-p", "dataplane-user"]);
    results.push(step(
        &mut p,
        "cargo build -p dataplane-user (with the eBPF object)",
        build,
        deadline,
        mins(45),
    ));

    let bin: PathBuf = target_dir()?.join("debug").join("dataplane");

    let mut common = cargo();
    common.args(["test", "--no-fail-fast", "-p", "dataplane-common"]);
    results.push(step(
        &mut p,
        "cargo test -p dataplane-common",
        common,
        deadline,
        mins(20),
    ));

    if !sh::interrupted() {
        let mut user = cargo();
        user.args(["test", "--no-fail-fast", "-p", "dataplane-user"]);
        results.push(step(
            &mut p,
            "cargo test -p dataplane-user (unit + BPF_PROG_TEST_RUN)",
            user,
            deadline,
            mins(30),
        ));
    }

    if !sh::interrupted() {
        let mut it = cargo();
        it.args([
            "test",
            "--no-fail-fast",
            "-p",
            "dataplane-tests",
            "--",
            "--test-threads=1",
        ])
        .env("DATAPLANE_BIN", &bin);
        results.push(step(
            &mut p,
            &format!(
                "cargo test -p dataplane-tests -- --test-threads=1 (DATAPLANE_BIN={})",
                bin.display()
            ),
            it,
            deadline,
            mins(60),
        ));
    }

    let total = results.iter().fold(Counts::default(), |mut t, r| {
        t.passed += r.counts.passed;
        t.failed += r.counts.failed;
        t
    });
    eprintln!("==> summary");
    for r in &results {
        let counts = if r.counts.passed + r.counts.failed > 0 {
            format!(" [{} passed, {} failed]", r.counts.passed, r.counts.failed)
        } else {
            String::new()
        };
        eprintln!(
            "    {:<7} {}{counts} ({})",
            if r.ok { "ok" } else { "FAILED" },
            r.name,
            r.detail
        );
    }
    println!("{} passed, {} failed", total.passed, total.failed);
    if sh::interrupted() {
        bail!("interrupted");
    }
    Ok(if results.iter().all(|r| r.ok) && total.failed == 0 {
        0
    } else {
        1
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_result_lines() {
        assert_eq!(
            parse_result_line("test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s"),
            Some(Counts { passed: 12, failed: 0 })
        );
        assert_eq!(
            parse_result_line(
                "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out"
            ),
            Some(Counts {
                passed: 3,
                failed: 2
            })
        );
        assert_eq!(parse_result_line("running 3 tests"), None);
    }
}
