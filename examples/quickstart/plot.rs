//! The timeline picture: what the provider saw, against its quota, with the
//! spans when the client's RetryAfter gate was closed.
//!
//! The upper panel counts accepted requests (per 100 ms, and in the trailing
//! window against the quota); the lower panel marks single arrivals, one row
//! per kind: refused with 429, answered with a 5xx, resent because the
//! server said so (after a 429 or a `Retry-After`), retried after a 5xx.
//! The legend sits beside the panels, never over the data.

use std::collections::HashMap;
use std::time::Duration;

use plotters::coord::Shift;
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use quota_mock::{Outcome, Stats};
use tower_quota::BoxError;
use tower_quota_quickstart::human;

/// The picture's size in pixels.
pub(crate) const SIZE: (u32, u32) = (1200, 520);
const LEGEND_WIDTH: u32 = 290;
const LABEL_AREA: u32 = 150;
const FONT: &str = "sans-serif";

// Okabe–Ito colours: distinguishable with the common colour-vision
// deficiencies, and in grey.
const BLUE: RGBColor = RGBColor(0, 114, 178);
const SKY: RGBColor = RGBColor(86, 180, 233);
const ORANGE: RGBColor = RGBColor(230, 159, 0);
const VERMILLION: RGBColor = RGBColor(213, 94, 0);
const PURPLE: RGBColor = RGBColor(204, 121, 167);
const GREY: RGBColor = RGBColor(100, 100, 100);

/// The rows of the lower panel, top to bottom.
const ROWS: [&str; 4] = [
    "429 refused",
    "5xx answered",
    "resent (server said)",
    "retried after 5xx",
];

/// What the picture shows, in seconds since the provider started.
pub(crate) struct Timeline {
    quota: u64,
    window: Duration,
    end: f64,
    /// Accepted arrivals in each 100 ms, from 0.
    accepted_per_100ms: Vec<u64>,
    /// Accepted arrivals in the trailing window, every 10 ms.
    trailing: Vec<(f64, f64)>,
    /// When the client's gate was closed: merged `(from, to)` spans.
    gate_closed: Vec<(f64, f64)>,
    /// Arrival times per row of [`ROWS`].
    marks: [Vec<f64>; 4],
}

impl Timeline {
    /// The timeline of `stats`, with the gate's closed spans (since the
    /// provider started, in any order, possibly overlapping).
    ///
    /// Requests are told apart by path: each logical request has a path of
    /// its own, so an arrival whose path came before is a retry, of the kind
    /// its previous arrival's answer asked for.
    pub(crate) fn new(
        stats: &Stats,
        quota: u64,
        window: Duration,
        gate_closed: &[(Duration, Duration)],
    ) -> Self {
        let last = stats
            .arrivals
            .iter()
            .map(|a| a.at)
            .chain(gate_closed.iter().map(|(_, to)| *to))
            .max()
            .unwrap_or_default();
        let end = last + Duration::from_millis(100);

        let accepted: Vec<Duration> = stats
            .arrivals
            .iter()
            .filter(|a| a.is_accepted())
            .map(|a| a.at)
            .collect();
        let mut accepted_per_100ms = vec![0u64; (end.as_millis() / 100) as usize + 1];
        for at in &accepted {
            accepted_per_100ms[(at.as_millis() / 100) as usize] += 1;
        }
        // `accepted` is sorted: two cursors count the trailing window.
        let mut trailing = Vec::new();
        let (mut first, mut past) = (0, 0);
        for step in 0..=(end.as_millis() / 10) as u64 {
            let at = Duration::from_millis(step * 10);
            while past < accepted.len() && accepted[past] <= at {
                past += 1;
            }
            while first < past && accepted[first] + window <= at {
                first += 1;
            }
            trailing.push((at.as_secs_f64(), (past - first) as f64));
        }

        let mut marks: [Vec<f64>; 4] = Default::default();
        let mut previous = HashMap::new();
        for arrival in &stats.arrivals {
            let at = arrival.at.as_secs_f64();
            if arrival.status == 429 {
                marks[0].push(at);
            } else if arrival.status >= 500 {
                marks[1].push(at);
            }
            if let Some(before) = previous.insert(arrival.path.as_str(), arrival) {
                let server_said = before.status == 429 || before.outcome == Outcome::Scripted;
                marks[if server_said { 2 } else { 3 }].push(at);
            }
        }

        let mut spans: Vec<(Duration, Duration)> = gate_closed.to_vec();
        spans.sort();
        let mut merged: Vec<(Duration, Duration)> = Vec::new();
        for (from, to) in spans {
            match merged.last_mut() {
                Some(last) if from <= last.1 => last.1 = last.1.max(to),
                _ => merged.push((from, to)),
            }
        }

        Timeline {
            quota,
            window,
            end: end.as_secs_f64(),
            accepted_per_100ms,
            trailing,
            gate_closed: merged
                .into_iter()
                .map(|(from, to)| (from.as_secs_f64(), to.as_secs_f64()))
                .collect(),
            marks,
        }
    }

    /// Draws the picture on `root`, of [`SIZE`].
    pub(crate) fn draw<DB>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), BoxError>
    where
        DB: DrawingBackend,
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        let (panels, legend) = root.split_horizontally(SIZE.0 - LEGEND_WIDTH);
        let (upper, lower) = panels.split_vertically(SIZE.1 * 64 / 100);
        self.draw_counts(&upper)?;
        self.draw_marks(&lower)?;
        self.draw_legend(&legend)?;
        root.present()?;
        Ok(())
    }

    fn draw_counts<DB>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), BoxError>
    where
        DB: DrawingBackend,
        DB::ErrorType: 'static,
    {
        let quota = self.quota as f64;
        let peak = self.trailing.iter().map(|(_, n)| *n).fold(quota, f64::max);
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!(
                    "accepted at the provider (quota {} per {})",
                    self.quota,
                    human(self.window)
                ),
                (FONT, 20),
            )
            .margin(10)
            .x_label_area_size(0)
            .y_label_area_size(LABEL_AREA)
            .build_cartesian_2d(0f64..self.end, 0f64..peak * 1.15)?;
        chart
            .configure_mesh()
            .y_desc("requests")
            .y_label_formatter(&|count| format!("{count:.0}"))
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        for (from, to) in &self.gate_closed {
            chart.draw_series(std::iter::once(Rectangle::new(
                [(*from, 0.0), (*to, peak * 1.15)],
                ORANGE.mix(0.25).filled(),
            )))?;
        }
        chart.draw_series(self.accepted_per_100ms.iter().enumerate().map(|(i, n)| {
            let x = i as f64 / 10.0;
            Rectangle::new([(x, 0.0), (x + 0.09, *n as f64)], SKY.mix(0.7).filled())
        }))?;
        // The quota first, wide and translucent; the trailing count on top,
        // so that where they meet both stay visible.
        chart.draw_series(LineSeries::new(
            [(0.0, quota), (self.end, quota)],
            VERMILLION.mix(0.55).stroke_width(6),
        ))?;
        chart.draw_series(
            self.steps()
                .into_iter()
                .map(|segment| PathElement::new(segment, BLUE.stroke_width(2))),
        )?;
        Ok(())
    }

    /// The trailing count as a step line, one element per straight segment:
    /// a wide polyline that turns back on itself (a count that drops and
    /// rises again within a pixel) draws miter spikes on bitmaps.
    fn steps(&self) -> Vec<Vec<(f64, f64)>> {
        let mut segments = Vec::new();
        let mut samples = self.trailing.iter().copied();
        let Some(mut start) = samples.next() else {
            return segments;
        };
        let mut last = start;
        for (x, y) in samples {
            if y != start.1 {
                segments.push(vec![start, (x, start.1)]);
                segments.push(vec![(x, start.1), (x, y)]);
                start = (x, y);
            }
            last = (x, y);
        }
        segments.push(vec![start, (last.0, start.1)]);
        segments
    }

    fn draw_marks<DB>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), BoxError>
    where
        DB: DrawingBackend,
        DB::ErrorType: 'static,
    {
        let rows = ROWS.len() as u32;
        let mut chart = ChartBuilder::on(area)
            .margin(10)
            .margin_top(0)
            .x_label_area_size(40)
            .y_label_area_size(LABEL_AREA)
            // Segments 0 to rows - 1: one per row, row 0 at the bottom.
            .build_cartesian_2d(0f64..self.end, (0u32..rows - 1).into_segmented())?;
        chart
            .configure_mesh()
            .x_desc("seconds since the provider started")
            .y_labels(ROWS.len())
            .y_label_formatter(&|value| match value {
                // ROWS[0] on the top row.
                SegmentValue::CenterOf(row) if *row < rows => {
                    ROWS[(rows - 1 - *row) as usize].to_owned()
                }
                _ => String::new(),
            })
            .disable_y_mesh()
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        for (from, to) in &self.gate_closed {
            chart.draw_series(std::iter::once(Rectangle::new(
                [(*from, SegmentValue::Exact(0)), (*to, SegmentValue::Last)],
                ORANGE.mix(0.25).filled(),
            )))?;
        }
        let row = |index: u32| SegmentValue::CenterOf(rows - 1 - index);
        chart.draw_series(
            self.marks[0]
                .iter()
                .map(|x| TriangleMarker::new((*x, row(0)), 6, VERMILLION.filled())),
        )?;
        chart.draw_series(
            self.marks[1]
                .iter()
                .map(|x| Circle::new((*x, row(1)), 4, GREY.stroke_width(2))),
        )?;
        chart.draw_series(
            self.marks[2]
                .iter()
                .map(|x| Circle::new((*x, row(2)), 5, PURPLE.filled())),
        )?;
        chart.draw_series(
            self.marks[3]
                .iter()
                .map(|x| Cross::new((*x, row(3)), 5, BLACK.stroke_width(2))),
        )?;
        Ok(())
    }

    fn draw_legend<DB>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), BoxError>
    where
        DB: DrawingBackend,
        DB::ErrorType: 'static,
    {
        let text = (FONT, 15).into_font().color(&BLACK);
        let entries: [(String, Glyph); 8] = [
            ("accepted per 100 ms".into(), Glyph::Bar(SKY.mix(0.7))),
            (
                format!("accepted in the trailing {}", human(self.window)),
                Glyph::Line(BLUE.stroke_width(2)),
            ),
            (
                format!("quota: {} per {}", self.quota, human(self.window)),
                Glyph::Line(VERMILLION.mix(0.55).stroke_width(6)),
            ),
            (
                "RetryAfter gate closed".into(),
                Glyph::Bar(ORANGE.mix(0.25)),
            ),
            ("refused with 429".into(), Glyph::Triangle),
            ("answered with a 5xx".into(), Glyph::Ring),
            ("resent after 429 / Retry-After".into(), Glyph::Dot),
            ("retried after a 5xx (backoff)".into(), Glyph::Cross),
        ];
        for (index, (label, glyph)) in entries.into_iter().enumerate() {
            let y = 50 + 28 * index as i32;
            let center = (22, y);
            match glyph {
                Glyph::Bar(color) => {
                    area.draw(&Rectangle::new([(10, y - 7), (34, y + 7)], color.filled()))?
                }
                Glyph::Line(style) => area.draw(&PathElement::new(vec![(8, y), (36, y)], style))?,
                Glyph::Triangle => {
                    area.draw(&TriangleMarker::new(center, 6, VERMILLION.filled()))?
                }
                Glyph::Ring => area.draw(&Circle::new(center, 4, GREY.stroke_width(2)))?,
                Glyph::Dot => area.draw(&Circle::new(center, 5, PURPLE.filled()))?,
                Glyph::Cross => area.draw(&Cross::new(center, 5, BLACK.stroke_width(2)))?,
            }
            area.draw(&Text::new(
                label,
                (44, y),
                text.pos(Pos::new(HPos::Left, VPos::Center)),
            ))?;
        }
        Ok(())
    }
}

/// How a legend entry is drawn.
enum Glyph {
    Bar(RGBAColor),
    Line(ShapeStyle),
    Triangle,
    Ring,
    Dot,
    Cross,
}
