//! The SVG chart: one horizontal bar per metric that has both figures, its
//! length the ours/floor ratio (1.0 = as good as the floor for "equal" metrics).

use crate::results::Results;
use plotters::prelude::*;
use std::path::Path;

/// Fonts plotters may use; the SVG backend still needs one to measure text.
const FONTS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

fn register_font() -> Result<(), String> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let bytes = FONTS
            .iter()
            .find_map(|p| std::fs::read(p).ok())
            .ok_or_else(|| {
                format!(
                    "no font for the chart (looked for {}); install fonts-dejavu-core",
                    FONTS.join(", ")
                )
            })?;
        // plotters keeps registered fonts for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| "the chart font could not be parsed".to_string())
    })
    .clone()
}

pub fn draw(results: &Results, path: &Path) -> Result<(), String> {
    register_font()?;
    let rows: Vec<(String, f64)> = results
        .metrics
        .iter()
        // Headline figures only: counts, fractions and CPU shares are checks.
        .filter(|m| !matches!(m.unit.as_str(), "count" | "fraction" | "cores"))
        .filter_map(|m| {
            m.ratio
                .map(|r| (format!("{} {} {}", m.workload, m.scenario, m.name), r))
        })
        .collect();
    if rows.is_empty() {
        return Err("no metric has both an ours and a floor figure".into());
    }
    let height = 80 + 28 * rows.len() as u32;
    let root = SVGBackend::new(path, (1000, height)).into_drawing_area();
    let err = |e: DrawingAreaErrorKind<_>| format!("drawing the chart: {e:?}");
    root.fill(&WHITE).map_err(err)?;
    let xmax = rows.iter().map(|r| r.1).fold(1.0f64, f64::max) * 1.15;
    let n = rows.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption("ours / floor (median of runs)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(0)
        .build_cartesian_2d(0.0..xmax, 0.0..n)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .disable_y_axis()
        .x_desc("ratio")
        .draw()
        .map_err(err)?;
    chart
        .draw_series(rows.iter().enumerate().map(|(i, (_, r))| {
            let y = n - 1.0 - i as f64;
            Rectangle::new([(0.0, y + 0.15), (*r, y + 0.85)], BLUE.mix(0.4).filled())
        }))
        .map_err(err)?;
    chart
        .draw_series(rows.iter().enumerate().map(|(i, (label, r))| {
            let y = n - 1.0 - i as f64;
            Text::new(
                format!("{label}: {r:.2}"),
                (xmax * 0.01, y + 0.7),
                ("sans-serif", 13),
            )
        }))
        .map_err(err)?;
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(1.0, 0.0), (1.0, n)],
            RED,
        )))
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
