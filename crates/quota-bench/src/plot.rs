//! The SVG plots, with plotters' SVG backend (no TTF: the SVG names the
//! font and the viewer draws it).

use std::path::Path;
use std::time::Duration;

use plotters::prelude::*;
use tower_quota::BoxError;

use crate::scenarios::Run;

const COLORS: [RGBColor; 7] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(23, 190, 207),
    RGBColor(227, 119, 194),
];

/// Accepted requests in the trailing window, sampled every 10 ms, one line
/// per limiter, against the quota.
pub(crate) fn timeline(
    runs: &[&Run],
    quota: u64,
    window: Duration,
    path: &Path,
) -> Result<(), BoxError> {
    let series: Vec<(&str, Vec<(f64, f64)>)> = runs
        .iter()
        .map(|run| {
            let times = run.accepted_times();
            let first = times.first().copied().unwrap_or_default();
            let end = times.last().copied().unwrap_or_default() - first + window;
            let mut start = 0;
            let mut end_index = 0;
            let points = (0..=end.as_millis() as u64 / 10)
                .map(|step| {
                    let at = first + Duration::from_millis(step * 10);
                    while end_index < times.len() && times[end_index] <= at {
                        end_index += 1;
                    }
                    while start < end_index && times[start] + window <= at {
                        start += 1;
                    }
                    ((at - first).as_secs_f64(), (end_index - start) as f64)
                })
                .collect();
            (run.name.as_str(), points)
        })
        .collect();
    let x_end = series
        .iter()
        .flat_map(|(_, points)| points.last().map(|(x, _)| *x))
        .fold(1.0, f64::max);

    let root = SVGBackend::new(path, (1000, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = quota as f64 * 1.6;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("accepted in the trailing {window:?}, as the server counts (quota {quota})"),
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d(0f64..x_end, 0f64..top)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the first acceptance")
        .y_desc("requests in the window")
        .draw()?;
    for (index, (name, points)) in series.iter().enumerate() {
        let color = COLORS[index % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .draw_series(LineSeries::new(
            [(0.0, quota as f64), (x_end, quota as f64)],
            RED.stroke_width(2),
        ))?
        .label(format!("quota: {quota} per {window:?}"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}

/// The CDF of retry arrival times after the shared 503, per strategy.
pub(crate) fn retry_cdf(curves: &[(&str, Vec<Duration>)], path: &Path) -> Result<(), BoxError> {
    let x_end = curves
        .iter()
        .flat_map(|(_, delays)| delays.last())
        .map(|d| d.as_secs_f64() * 1000.0)
        .fold(1.0, f64::max)
        * 1.05;
    let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "retries after a shared 503: when they reach the server",
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d(0f64..x_end, 0f64..1.0)?;
    chart
        .configure_mesh()
        .x_desc("milliseconds since the shared 503")
        .y_desc("fraction of retries")
        .draw()?;
    for (index, (name, delays)) in curves.iter().enumerate() {
        let color = COLORS[index % COLORS.len()];
        let n = delays.len().max(1) as f64;
        // A step line: (x, i/n) then (x, (i+1)/n).
        let mut points = vec![(0.0, 0.0)];
        for (i, delay) in delays.iter().enumerate() {
            let x = delay.as_secs_f64() * 1000.0;
            points.push((x, i as f64 / n));
            points.push((x, (i + 1) as f64 / n));
        }
        points.push((x_end, 1.0));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}
