//! The statistics every bench reports: percentiles of one run's samples,
//! the median and min–max spread over repetitions, and ratio cells.

use serde::Serialize;

/// The `p`-th percentile (0–100) of ascending `sorted` samples, nearest
/// rank; `None` without samples.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    Some(sorted[i.min(sorted.len() - 1)])
}

/// Median and min–max of a figure over repetitions, with the samples in
/// the order they were taken.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub samples: Vec<f64>,
}

/// The spread of `v`; `None` without samples.
pub fn spread(v: &[f64]) -> Option<Spread> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Some(Spread {
        median,
        min: s[0],
        max: s[n - 1],
        samples: v.to_vec(),
    })
}

/// `a / b` when both are there and `b` is positive.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    let (a, b) = (a?, b?);
    (b > 0.0).then(|| a / b)
}

/// A ratio as a table cell: `1.23x`, or `missing` when there is none.
pub fn ratio_or(v: Option<f64>, missing: &str) -> String {
    v.map_or_else(|| missing.to_string(), |v| format!("{v:.2}x"))
}

/// A ratio as a table cell: `1.23x`, or `–` when there is none.
pub fn ratio_cell(v: Option<f64>) -> String {
    ratio_or(v, "–")
}

/// One setup's row of a [`figure_table`].
pub struct FigureRow<'a> {
    pub title: &'a str,
    /// The figure over reps and its two ratios, if it was measured.
    pub fig: Option<(&'a Spread, Option<f64>, Option<f64>)>,
    /// What the row says when there is no figure.
    pub why_none: &'a str,
    /// The TCP stream's retransmits (shown when the table has them).
    pub retransmits: Option<&'a Spread>,
}

/// A markdown table of one figure across setups: median, spread, the two
/// ratio columns named by `ratios`, and with `retr` the retransmits.
pub fn figure_table(
    o: &mut String,
    unit: &str,
    ratios: [&str; 2],
    retr: bool,
    prec: usize,
    rows: &[FigureRow],
) {
    use std::fmt::Write as _;
    let _ = writeln!(
        o,
        "| setup | median ({unit}) | spread (min–max) | {} | {} |{}",
        ratios[0],
        ratios[1],
        if retr {
            " retransmits (median) | retransmits (min–max) |"
        } else {
            ""
        }
    );
    let _ = writeln!(
        o,
        "| --- | ---: | ---: | ---: | ---: |{}",
        if retr { " ---: | ---: |" } else { "" }
    );
    for r in rows {
        let t = r.title;
        let extra = match (r.retransmits, retr) {
            (_, false) => String::new(),
            (Some(x), true) => format!(" {:.0} | {:.0}–{:.0} |", x.median, x.min, x.max),
            (None, true) => " – | |".into(),
        };
        match r.fig {
            Some((s, a, b)) => {
                let _ = writeln!(
                    o,
                    "| {t} | {:.prec$} | {:.prec$}–{:.prec$} | {} | {} |{extra}",
                    s.median,
                    s.min,
                    s.max,
                    ratio_cell(a),
                    ratio_cell(b)
                );
            }
            None => {
                let _ = writeln!(o, "| {t} | {} | | | |{extra}", r.why_none);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_spread() {
        let s = spread(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(s.samples, vec![3.0, 1.0, 2.0]);
        assert_eq!(spread(&[1.0, 2.0, 3.0, 4.0]).unwrap().median, 2.5);
        assert!(spread(&[]).is_none());
    }

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<f64> = (1..=101).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(51.0));
        assert_eq!(percentile(&v, 99.0), Some(100.0));
        assert_eq!(percentile(&v, 100.0), Some(101.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn ratios_and_cells() {
        assert_eq!(ratio(Some(3.0), Some(2.0)), Some(1.5));
        assert_eq!(ratio(Some(3.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(2.0)), None);
        assert_eq!(ratio_cell(Some(1.5)), "1.50x");
        assert_eq!(ratio_cell(None), "–");
        assert_eq!(ratio_or(None, "not measured"), "not measured");
    }

    #[test]
    fn a_figure_table_has_a_row_per_setup_and_says_why_one_is_empty() {
        let sp = spread(&[1.0, 2.0, 3.0]).unwrap();
        let mut o = String::new();
        let rows = [
            FigureRow {
                title: "(a)",
                fig: Some((&sp, Some(1.0), None)),
                why_none: "",
                retransmits: Some(&sp),
            },
            FigureRow {
                title: "(b)",
                fig: None,
                why_none: "no sample",
                retransmits: None,
            },
        ];
        figure_table(&mut o, "x", ["vs a", "vs b"], true, 1, &rows);
        let lines: Vec<&str> = o.lines().collect();
        assert_eq!(
            lines[0],
            "| setup | median (x) | spread (min–max) | vs a | vs b | retransmits (median) | retransmits (min–max) |"
        );
        assert_eq!(lines[2], "| (a) | 2.0 | 1.0–3.0 | 1.00x | – | 2 | 1–3 |");
        assert_eq!(lines[3], "| (b) | no sample | | | | – | |");
    }
}
