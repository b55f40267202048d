//! The sweep's SVG plots (plotters' SVG backend: no fonts or system libraries needed) and the
//! reader of torch's numbers.
//!
//! One plot per op: on top GB/s against columns (log scale), one line per dtype, the
//! device-to-device copy as a reference line, the model's prediction (dashed) and torch's
//! numbers (dotted) when given; below, the traffic the plan moves over the minimum.

use std::path::Path;

use plotters::prelude::*;

use cuda_softmax::Dtype;

use crate::sweep::{NOMINAL_CARD, Point, SweepOp};

/// One of torch's measurements (scripts/torch_softmax_bandwidth.py --csv).
#[derive(Debug, Clone, PartialEq)]
pub struct TorchPoint {
    pub op: String,
    pub dtype: String,
    pub cols: usize,
    pub gbs: f64,
}

/// Reads `op,dtype,rows,cols,gbs` lines after a header line.
pub fn read_torch_csv(path: &Path) -> Result<Vec<TorchPoint>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read --torch {}: {e}", path.display()))?;
    parse_torch_csv(&text).map_err(|e| format!("--torch {}: {e}", path.display()))
}

pub fn parse_torch_csv(text: &str) -> Result<Vec<TorchPoint>, String> {
    let mut points = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let bad = || {
            format!(
                "line {}: expected op,dtype,rows,cols,gbs, got {line:?}",
                i + 1
            )
        };
        if f.len() < 5 {
            return Err(bad());
        }
        let cols = f[3].parse::<usize>().map_err(|_| bad())?;
        let gbs = f[4].parse::<f64>().map_err(|_| bad())?;
        if !(gbs.is_finite() && gbs > 0.0) {
            return Err(bad());
        }
        points.push(TorchPoint {
            op: f[0].to_string(),
            dtype: f[1].to_string(),
            cols,
            gbs,
        });
    }
    Ok(points)
}

fn dtype_color(dtype: Dtype) -> RGBColor {
    match dtype {
        Dtype::F32 => RGBColor(31, 119, 180),
        Dtype::F16 => RGBColor(214, 39, 40),
        Dtype::Bf16 => RGBColor(44, 160, 44),
        _ => RGBColor(127, 127, 127),
    }
}

/// Line widths that narrow in drawing order, so that dtypes with the same numbers (common:
/// the traffic ratios of f16 and bf16 are equal) show as nested stripes instead of one line.
fn dtype_width(dtype: Dtype) -> u32 {
    match dtype {
        Dtype::F32 => 6,
        Dtype::F16 => 4,
        Dtype::Bf16 => 2,
        _ => 1,
    }
}

fn err(e: impl std::fmt::Display) -> String {
    format!("plot: {e}")
}

/// The (columns, value) points of one dtype, sorted by columns.
fn series(points: &[&Point], dtype: Dtype, value: impl Fn(&Point) -> f64) -> Vec<(f64, f64)> {
    let mut s: Vec<(f64, f64)> = points
        .iter()
        .filter(|p| p.dtype == dtype)
        .map(|p| (p.cols as f64, value(p)))
        .collect();
    s.sort_by(|a, b| a.0.total_cmp(&b.0));
    s
}

/// Draws `path`: the plot of `op`.
pub fn draw(
    path: &Path,
    op: SweepOp,
    all: &[Point],
    torch: &[TorchPoint],
    label: &str,
) -> Result<(), String> {
    let points: Vec<&Point> = all.iter().filter(|p| p.op == op).collect();
    let torch: Vec<&TorchPoint> = torch.iter().filter(|t| t.op == op.name()).collect();
    let on_gpu = points.first().is_some_and(|p| p.on_gpu);
    let copy = points.first().map_or(1.0, |p| p.copy_gbs);
    let col_min = points.iter().map(|p| p.cols).min().unwrap_or(1) as f64;
    let col_max = points.iter().map(|p| p.cols).max().unwrap_or(2) as f64;
    // Room on both sides so that end points are not on the frame (and one column still works).
    let x_range = (col_min / 1.5)..(col_max * 1.5);
    let y_max = points
        .iter()
        .map(|p| p.gbs.max(p.predicted_gbs))
        .chain(torch.iter().map(|t| t.gbs))
        .fold(copy, f64::max)
        * 1.1;

    let root = SVGBackend::new(path, (1000, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (top, bottom) = root.split_vertically(600);
    let caption = if on_gpu {
        format!("{}: measured GB/s on {label}", op.name())
    } else {
        format!(
            "{}: PREDICTED GB/s, no GPU: emulator traffic, copy of an {NOMINAL_CARD}",
            op.name()
        )
    };
    let mut chart = ChartBuilder::on(&top)
        .caption(caption, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x_range.clone().log_scale(), 0f64..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .max_light_lines(4)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .x_desc("columns (log scale)")
        .y_desc("GB/s of the minimum bytes")
        .draw()
        .map_err(err)?;

    for dtype in Dtype::ALL {
        let color = dtype_color(dtype);
        let solid = color.stroke_width(dtype_width(dtype));
        let dashed = color.stroke_width(1);
        if on_gpu {
            chart
                .draw_series(LineSeries::new(series(&points, dtype, |p| p.gbs), solid))
                .map_err(err)?
                .label(format!("{} measured", dtype.name()))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], solid));
            chart
                .draw_series(DashedLineSeries::new(
                    series(&points, dtype, |p| p.predicted_gbs),
                    6,
                    4,
                    dashed,
                ))
                .map_err(err)?
                .label(format!("{} model (dashed)", dtype.name()))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], dashed));
        } else {
            chart
                .draw_series(LineSeries::new(
                    series(&points, dtype, |p| p.predicted_gbs),
                    solid,
                ))
                .map_err(err)?
                .label(format!("{} predicted", dtype.name()))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], solid));
        }
        let mut t: Vec<(f64, f64)> = torch
            .iter()
            .filter(|t| t.dtype == dtype.name())
            .map(|t| (t.cols as f64, t.gbs))
            .collect();
        if !t.is_empty() {
            t.sort_by(|a, b| a.0.total_cmp(&b.0));
            let dotted = color.stroke_width(2);
            let thin = color.stroke_width(1);
            chart
                .draw_series(DashedLineSeries::new(t, 2, 4, dotted))
                .map_err(err)?
                .label(format!("{} torch (dotted)", dtype.name()))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], thin));
        }
    }
    // Last, so that the copy stays visible where a dtype reaches it.
    let copy_style = BLACK.stroke_width(1);
    chart
        .draw_series(LineSeries::new(
            [(x_range.start, copy), (x_range.end, copy)],
            copy_style,
        ))
        .map_err(err)?
        .label(if on_gpu {
            format!("device-to-device copy {copy:.0} GB/s")
        } else {
            format!("copy {copy:.0} GB/s (nominal)")
        })
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], copy_style));

    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;

    draw_traffic(&bottom, &points, x_range)?;
    root.present().map_err(err)
}

/// The lower panel: bytes the plan moves over the minimum, per dtype.
fn draw_traffic<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    points: &[&Point],
    x_range: std::ops::Range<f64>,
) -> Result<(), String> {
    // Headroom above the lines for the legend in the upper right corner.
    let t_max = points.iter().map(|p| p.traffic()).fold(2.0, f64::max) * 1.35;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "traffic: bytes moved / minimum bytes (emulator count)",
            ("sans-serif", 14),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x_range.log_scale(), 0f64..t_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .max_light_lines(4)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.1}"))
        .x_desc("columns (log scale)")
        .y_desc("traffic / minimum")
        .draw()
        .map_err(err)?;
    for dtype in Dtype::ALL {
        let style = dtype_color(dtype).stroke_width(dtype_width(dtype));
        chart
            .draw_series(LineSeries::new(
                series(points, dtype, Point::traffic),
                style,
            ))
            .map_err(err)?
            .label(format!("{} traffic", dtype.name()))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torch_csv_parses_and_rejects() {
        let t = parse_torch_csv("op,dtype,rows,cols,gbs\nsoftmax,f32,8,1024,2500.5\n\n").unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].cols, 1024);
        assert!(parse_torch_csv("h\nsoftmax,f32,8\n").is_err());
        assert!(parse_torch_csv("h\nsoftmax,f32,8,x,1\n").is_err());
        assert!(parse_torch_csv("h\nsoftmax,f32,8,16,-1\n").is_err());
    }
}
