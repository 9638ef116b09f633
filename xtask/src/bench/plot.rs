//! The scale curve's plots: one PNG with a panel per figure, each against N on log-log axes,
//! with a dotted line of linear growth from the first point for comparison (a figure that
//! climbs above it grows faster than N). Text is drawn with ab_glyph from DejaVu Sans (Debian's
//! fonts-dejavu-core, installed by `cargo xtask setup`), so no fontconfig or freetype is needed.
use std::path::Path;

use anyhow::{Context as _, Result, anyhow};
use plotters::prelude::*;

pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// One panel: a title, the y axis's unit and its lines (name, points (N, value)).
pub struct Panel {
    pub title: String,
    pub y: String,
    pub series: Vec<(String, Vec<(f64, f64)>)>,
    /// Whether to draw the linear reference (not for rates, which fall with N).
    pub linear: bool,
}

fn font() -> Result<()> {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if DONE.get().is_some() {
        return Ok(());
    }
    let bytes = std::fs::read(FONT).with_context(|| format!("reading the plots' font {FONT}"))?;
    // Registered once for the bench's life: plotters keeps a 'static reference.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{FONT} is not a font ab_glyph can read"))?;
    let _ = DONE.set(());
    Ok(())
}

/// A tick label with at most three significant digits.
fn short(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Draws `panels` two per row into `path`.
pub fn draw(path: &Path, panels: &[Panel]) -> Result<()> {
    font()?;
    let rows = panels.len().div_ceil(2).max(1);
    let root = BitMapBackend::new(path, (1400, 420 * rows as u32)).into_drawing_area();
    let err = |e: &dyn std::fmt::Debug| anyhow!("drawing {}: {e:?}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let areas = root.split_evenly((rows, 2));
    for (area, panel) in areas.iter().zip(panels) {
        let points: Vec<(f64, f64)> = panel
            .series
            .iter()
            .flat_map(|(_, p)| p.iter().copied())
            .filter(|(x, y)| *x > 0.0 && *y > 0.0 && y.is_finite())
            .collect();
        if points.is_empty() {
            continue;
        }
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for (x, y) in &points {
            x0 = x0.min(*x);
            x1 = x1.max(*x);
            y0 = y0.min(*y);
            y1 = y1.max(*y);
        }
        // The linear reference from the first series' first point, to the largest N.
        let linear = panel
            .series
            .first()
            .filter(|_| panel.linear)
            .and_then(|(_, p)| p.iter().copied().find(|(x, y)| *x > 0.0 && *y > 0.0))
            .map(|(x, y)| vec![(x, y), (x1, y * x1 / x)]);
        if let Some(l) = &linear {
            y1 = y1.max(l[1].1);
        }
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(
                (x0 / 1.5..x1 * 1.5).log_scale(),
                (y0 / 2.0..y1 * 2.0).log_scale(),
            )
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("live containers (N)")
            .y_desc(&panel.y)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| short(*y))
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| err(&e))?;
        if let Some(l) = linear {
            chart
                .draw_series(DashedLineSeries::new(
                    l,
                    4,
                    4,
                    BLACK.mix(0.4).stroke_width(1),
                ))
                .map_err(|e| err(&e))?
                .label("linear in N")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.4)));
        }
        for (i, (name, pts)) in panel.series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let pts: Vec<(f64, f64)> = pts
                .iter()
                .copied()
                .filter(|(x, y)| *x > 0.0 && *y > 0.0 && y.is_finite())
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(|e| err(&e))?;
        }
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Draws `panels` two per row into `path` on linear axes against `x` (the soak's readings over
/// its run), each from 0 so that growth shows at its true scale.
pub fn timeline(path: &Path, x: &str, panels: &[Panel]) -> Result<()> {
    font()?;
    let rows = panels.len().div_ceil(2).max(1);
    let root = BitMapBackend::new(path, (1400, 420 * rows as u32)).into_drawing_area();
    let err = |e: &dyn std::fmt::Debug| anyhow!("drawing {}: {e:?}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let areas = root.split_evenly((rows, 2));
    for (area, panel) in areas.iter().zip(panels) {
        let points: Vec<(f64, f64)> = panel
            .series
            .iter()
            .flat_map(|(_, p)| p.iter().copied())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        if points.is_empty() {
            continue;
        }
        let x1 = points.iter().map(|p| p.0).fold(1.0, f64::max);
        let y1 = points.iter().map(|p| p.1).fold(1.0, f64::max);
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..x1 * 1.02, 0.0..y1 * 1.15)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc(x)
            .y_desc(&panel.y)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| short(*y))
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| err(&e))?;
        for (i, (name, pts)) in panel.series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
