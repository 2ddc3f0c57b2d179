//! The SVG curves of the benchmarks (BENCHMARKS-nat.svg,
//! BENCHMARKS-services.svg): a figure's median against a count on a log x
//! axis, one line per path, with min–max bars over the repetitions. SVG
//! only, no system fonts (text is left to the viewer).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};

use crate::stats::Spread;

/// One line of a [`curve`].
pub struct Series {
    pub label: &'static str,
    pub rgb: (u8, u8, u8),
    /// (x, the figure over reps), x ascending.
    pub points: Vec<(f64, Spread)>,
}

/// What a [`curve`] says around its lines.
pub struct Labels<'a> {
    pub caption: &'a str,
    pub x: &'a str,
    pub y: &'a str,
}

/// The red of the kernel's paths and the blue of ours, in every curve.
pub const RED: (u8, u8, u8) = (0xd6, 0x27, 0x28);
pub const BLUE: (u8, u8, u8) = (0x1f, 0x77, 0xb4);

/// `BENCHMARKS-<suffix>.svg` beside the report `out`.
pub fn beside(out: &Path, suffix: &str) -> PathBuf {
    let stem = out
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("BENCHMARKS");
    out.with_file_name(format!("{stem}-{suffix}.svg"))
}

/// Draws `series` to `path`; false (and no file) if no series has a point.
pub fn curve(path: &Path, l: &Labels, series: &[Series]) -> Result<bool> {
    use plotters::prelude::*;

    if series.iter().all(|s| s.points.is_empty()) {
        return Ok(false);
    }
    let ymax = series
        .iter()
        .flat_map(|s| s.points.iter().map(|(_, p)| p.max))
        .fold(0.0, f64::max)
        * 1.35; // room for the legend above the data
    let xmax = series
        .iter()
        .flat_map(|s| s.points.iter().map(|(x, _)| *x))
        .fold(10.0, f64::max)
        * 2.0;
    let e = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let root = SVGBackend::new(path, (880, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(l.caption, ("sans-serif", 22))
        .margin(18)
        .x_label_area_size(52)
        .y_label_area_size(80)
        .build_cartesian_2d((0.5f64..xmax).log_scale(), 0f64..ymax.max(1.0))
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc(l.x)
        .y_desc(l.y)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .draw()
        .map_err(|x| e(&x))?;
    for s in series {
        if s.points.is_empty() {
            continue;
        }
        let color = RGBColor(s.rgb.0, s.rgb.1, s.rgb.2);
        chart
            .draw_series(LineSeries::new(
                s.points.iter().map(|(x, p)| (*x, p.median)),
                color.stroke_width(3),
            ))
            .map_err(|x| e(&x))?
            .label(s.label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
        chart
            .draw_series(
                s.points
                    .iter()
                    .map(|(x, p)| Circle::new((*x, p.median), 5, color.filled())),
            )
            .map_err(|x| e(&x))?;
        chart
            .draw_series(s.points.iter().map(|(x, p)| {
                ErrorBar::new_vertical(*x, p.min, p.median, p.max, color.stroke_width(2), 12)
            }))
            .map_err(|x| e(&x))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperMiddle)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::spread;

    #[test]
    fn beside_the_report() {
        assert_eq!(
            beside(Path::new("/r/BENCHMARKS.md"), "nat"),
            Path::new("/r/BENCHMARKS-nat.svg")
        );
        assert_eq!(
            beside(Path::new("x.md"), "services"),
            Path::new("x-services.svg")
        );
    }

    #[test]
    fn draws_lines_or_nothing() {
        let dir = std::env::temp_dir().join(format!("plot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.svg");
        let l = Labels {
            caption: "c",
            x: "x",
            y: "y",
        };
        let empty = [Series {
            label: "none",
            rgb: RED,
            points: Vec::new(),
        }];
        assert!(!curve(&f, &l, &empty).unwrap());
        assert!(!f.exists());
        let s = [Series {
            label: "ours",
            rgb: BLUE,
            points: vec![
                (1.0, spread(&[10.0, 12.0]).unwrap()),
                (100.0, spread(&[9.0, 11.0]).unwrap()),
            ],
        }];
        assert!(curve(&f, &l, &s).unwrap());
        let svg = std::fs::read_to_string(&f).unwrap();
        assert!(svg.contains("<svg") && svg.contains("ours"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
