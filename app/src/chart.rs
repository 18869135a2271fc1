//! Charts: which metrics a run page pins, the smoothing, and the drawing. The server sends buckets (min, max
//! and last value over a step range) sized to the chart width; this module draws the min/max band, the raw
//! line and the smoothed line as SVG with `plotters`. The same code runs in SSR and in the browser, so a
//! live update redraws exactly what the server first rendered. Axis labels are HTML beside the SVG: plotters
//! without a font backend cannot measure text.

use plotters::prelude::*;
use userrl_types::MetricBucket;

/// Pixel size of one chart's plot area, and so the number of buckets asked for.
pub const WIDTH: u32 = 560;
pub const HEIGHT: u32 = 200;

/// The metrics a run page shows first, in order (DESIGN.md's names); a trailing `/` matches a family
/// (`reward/` matches `reward/intention`).
pub const PINNED: &[&str] = &[
    "reward",
    "reward/",
    "success/",
    "loss",
    "sft/loss",
    "kl",
    "entropy",
    "grad_norm",
    "clip_ratio/low_mean",
    "clip_ratio/high_mean",
    "turns/mean",
    "termination/",
    "frac_reward_zero_std",
    "reward_std",
    "completions/mean_length",
    "rollout/tokens_per_s",
    "train/tokens_per_s",
    "user_latency/p50",
    "user_latency/p99",
];

/// Splits a run's metric keys into (pinned, in `PINNED` order; the rest, sorted).
pub fn pinned_keys(keys: &[String]) -> (Vec<String>, Vec<String>) {
    let mut pinned = Vec::new();
    for pattern in PINNED {
        let mut family: Vec<&String> = if pattern.ends_with('/') {
            keys.iter().filter(|k| k.starts_with(pattern) && k.len() > pattern.len()).collect()
        } else {
            keys.iter().filter(|k| k.as_str() == *pattern).collect()
        };
        family.sort();
        for k in family {
            if !pinned.contains(k) {
                pinned.push(k.clone());
            }
        }
    }
    let mut rest: Vec<String> = keys.iter().filter(|k| !pinned.contains(k)).cloned().collect();
    rest.sort();
    (pinned, rest)
}

/// Time-weighted exponential moving average over (step, value) points, debiased like TensorBoard's: a gap
/// of `k` typical step widths decays the history as `k` ordinary steps would, so unevenly logged or bucketed
/// points smooth the same way. `smoothing` in [0, 1): 0 returns the input.
pub fn smooth(points: &[(f64, f64)], smoothing: f64) -> Vec<(f64, f64)> {
    let s = smoothing.clamp(0.0, 0.999);
    if s == 0.0 || points.len() < 2 {
        return points.to_vec();
    }
    let span = points[points.len() - 1].0 - points[0].0;
    let unit = if span > 0.0 { span / (points.len() - 1) as f64 } else { 1.0 };
    let mut out = Vec::with_capacity(points.len());
    let mut acc = 0.0;
    let mut weight = 0.0;
    let mut prev_x = points[0].0;
    for &(x, y) in points {
        if !y.is_finite() {
            continue;
        }
        let decay = s.powf(((x - prev_x) / unit).max(0.0));
        acc = acc * decay + (1.0 - s) * y;
        weight = weight * decay + (1.0 - s);
        prev_x = x;
        out.push((x, acc / weight));
    }
    out
}

/// A series to draw: one run's buckets of one metric.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    pub run_id: i64,
    pub buckets: Vec<MetricBucket>,
}

/// The drawn chart: its SVG and the ranges the HTML axis labels show.
#[derive(Clone, Debug, PartialEq)]
pub struct Drawn {
    pub svg: String,
    pub x: (f64, f64),
    pub y: (f64, f64),
    pub points: usize,
}

/// Colours of compared runs, in order.
pub const PALETTE: [(u8, u8, u8); 6] =
    [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)];

pub fn color(i: usize) -> RGBColor {
    let (r, g, b) = PALETTE[i % PALETTE.len()];
    RGBColor(r, g, b)
}

/// CSS colour of the i-th compared run (for legends).
pub fn css_color(i: usize) -> String {
    let (r, g, b) = PALETTE[i % PALETTE.len()];
    format!("rgb({r},{g},{b})")
}

/// Draws the lines: per run a light min/max band, the raw line (bucket last values) faint when smoothing,
/// and the smoothed line on top.
pub fn draw(lines: &[Line], smoothing: f64) -> Drawn {
    let finite = |v: f64| v.is_finite();
    let mut x = (f64::INFINITY, f64::NEG_INFINITY);
    let mut y = (f64::INFINITY, f64::NEG_INFINITY);
    let mut points = 0;
    for line in lines {
        for b in &line.buckets {
            points += 1;
            x.0 = x.0.min(b.first_step as f64);
            x.1 = x.1.max(b.last_step as f64);
            for v in [b.min, b.max, b.last] {
                if finite(v) {
                    y.0 = y.0.min(v);
                    y.1 = y.1.max(v);
                }
            }
        }
    }
    if !x.0.is_finite() {
        x = (0.0, 1.0);
    }
    if !y.0.is_finite() {
        y = (0.0, 1.0);
    }
    if x.1 - x.0 < 1.0 {
        x = (x.0 - 0.5, x.1 + 0.5);
    }
    if y.1 - y.0 < 1e-12 {
        let pad = if y.0 == 0.0 { 1.0 } else { y.0.abs() * 0.1 };
        y = (y.0 - pad, y.1 + pad);
    } else {
        let pad = (y.1 - y.0) * 0.05;
        y = (y.0 - pad, y.1 + pad);
    }
    let mut svg = String::new();
    // Drawing into a String cannot fail for I/O reasons; a plotters error leaves a partial (still valid
    // to embed) SVG, which is better than no chart.
    let _ = render(&mut svg, lines, smoothing, x, y);
    Drawn { svg, x, y, points }
}

fn render<'a>(
    out: &'a mut String,
    lines: &[Line],
    smoothing: f64,
    x: (f64, f64),
    y: (f64, f64),
) -> Result<(), Box<dyn std::error::Error + 'a>> {
    let root = SVGBackend::with_string(out, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root).margin(2).build_cartesian_2d(x.0..x.1, y.0..y.1)?;
    // Grid lines at the quarter marks, where the HTML labels sit (see `ticks`).
    for t in ticks(y) {
        chart.draw_series(LineSeries::new([(x.0, t), (x.1, t)], RGBColor(232, 232, 232).stroke_width(1)))?;
    }
    for (i, line) in lines.iter().enumerate() {
        let c = color(i);
        let mid = |b: &MetricBucket| (b.first_step as f64 + b.last_step as f64) / 2.0;
        let band: Vec<&MetricBucket> = line.buckets.iter().filter(|b| b.min.is_finite() && b.max.is_finite()).collect();
        if band.iter().any(|b| b.max > b.min) {
            let mut poly: Vec<(f64, f64)> = band.iter().map(|b| (mid(b), b.max)).collect();
            poly.extend(band.iter().rev().map(|b| (mid(b), b.min)));
            chart.draw_series(std::iter::once(Polygon::new(poly, c.mix(0.15).filled())))?;
        }
        let raw: Vec<(f64, f64)> =
            line.buckets.iter().filter(|b| b.last.is_finite()).map(|b| (b.last_step as f64, b.last)).collect();
        if smoothing > 0.0 {
            chart.draw_series(LineSeries::new(raw.iter().copied(), c.mix(0.3).stroke_width(1)))?;
            chart.draw_series(LineSeries::new(smooth(&raw, smoothing), c.stroke_width(2)))?;
        } else {
            chart.draw_series(LineSeries::new(raw.iter().copied(), c.stroke_width(2)))?;
        }
        if raw.len() == 1 {
            chart.draw_series(raw.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
        }
    }
    root.present()?;
    Ok(())
}

/// The y values of the grid lines and labels: the range's quarter marks, top first.
pub fn ticks(y: (f64, f64)) -> [f64; 5] {
    let step = (y.1 - y.0) / 4.0;
    [y.1, y.0 + 3.0 * step, y.0 + 2.0 * step, y.0 + step, y.0]
}

/// Adds live points to a line: a new step becomes its own bucket; a step already inside the last bucket
/// updates it. Keeps at most `max_buckets` by merging the oldest pairs, so a long live session stays cheap.
pub fn push_point(buckets: &mut Vec<MetricBucket>, step: i64, value: f64, max_buckets: usize) {
    if let Some(last) = buckets.last_mut()
        && step <= last.last_step
        && step >= last.first_step
    {
        last.min = last.min.min(value);
        last.max = last.max.max(value);
        if step == last.last_step {
            last.last = value;
        }
        last.count += 1;
        return;
    }
    if buckets.last().is_some_and(|b| step < b.first_step) {
        // An old step (already drawn from the server's buckets): nothing to add.
        return;
    }
    buckets.push(MetricBucket { first_step: step, last_step: step, min: value, max: value, last: value, count: 1 });
    if buckets.len() > max_buckets.max(2) {
        let merged: Vec<MetricBucket> = buckets
            .chunks(2)
            .map(|pair| {
                let (a, b) = (&pair[0], pair.last().unwrap_or(&pair[0]));
                MetricBucket {
                    first_step: a.first_step,
                    last_step: b.last_step,
                    min: a.min.min(b.min),
                    max: a.max.max(b.max),
                    last: b.last,
                    count: if pair.len() == 2 { a.count + b.count } else { a.count },
                }
            })
            .collect();
        *buckets = merged;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(step: i64, v: f64) -> MetricBucket {
        MetricBucket { first_step: step, last_step: step, min: v, max: v, last: v, count: 1 }
    }

    #[test]
    fn pinned_keys_follow_the_design_order() {
        let keys: Vec<String> = ["zeta", "loss", "reward/b", "reward", "reward/a", "kl", "success/a"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (pinned, rest) = pinned_keys(&keys);
        assert_eq!(pinned, ["reward", "reward/a", "reward/b", "success/a", "loss", "kl"]);
        assert_eq!(rest, ["zeta"]);
    }

    #[test]
    fn smoothing_zero_is_identity_and_constant_stays_constant() {
        let pts = vec![(0.0, 1.0), (1.0, 3.0), (5.0, 2.0)];
        assert_eq!(smooth(&pts, 0.0), pts);
        let flat: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 2.5)).collect();
        for (_, v) in smooth(&flat, 0.9) {
            assert!((v - 2.5).abs() < 1e-12);
        }
    }

    #[test]
    fn smoothing_is_debiased_and_weights_gaps_by_time() {
        // The first point is returned as is (debiased), the next pulled towards the history.
        let s = smooth(&[(0.0, 0.0), (1.0, 1.0), (2.0, 1.0)], 0.5);
        assert_eq!(s[0].1, 0.0);
        assert!((s[1].1 - 2.0 / 3.0).abs() < 1e-12);
        // A long gap forgets more history than a short one.
        let short = smooth(&[(0.0, 0.0), (1.0, 0.0), (2.0, 1.0), (10.0, 1.0)], 0.8);
        let long = smooth(&[(0.0, 0.0), (1.0, 0.0), (9.0, 1.0), (10.0, 1.0)], 0.8);
        assert!(long[2].1 > short[2].1);
    }

    #[test]
    fn draw_emits_svg_with_a_path_per_line() {
        let lines = vec![
            Line { run_id: 1, buckets: (0..20).map(|i| bucket(i, (i as f64).sin())).collect() },
            Line { run_id: 2, buckets: (0..20).map(|i| bucket(i, (i as f64).cos())).collect() },
        ];
        let d = draw(&lines, 0.6);
        assert!(d.svg.starts_with("<svg"));
        assert_eq!(d.points, 40);
        assert!(d.svg.matches("<polyline").count() >= 4, "{}", d.svg);
        assert!(d.x.0 <= 0.0 && d.x.1 >= 19.0);
        // Empty charts still draw (an empty frame), never panic.
        assert!(draw(&[], 0.0).svg.starts_with("<svg"));
        assert!(draw(&[Line { run_id: 1, buckets: vec![bucket(3, f64::NAN)] }], 0.5).svg.starts_with("<svg"));
    }

    #[test]
    fn live_points_extend_and_stay_bounded() {
        let mut b = vec![bucket(0, 1.0)];
        push_point(&mut b, 1, 2.0, 4);
        push_point(&mut b, 1, 3.0, 4);
        assert_eq!(b.len(), 2);
        assert_eq!((b[1].min, b[1].max, b[1].last, b[1].count), (2.0, 3.0, 3.0, 2));
        push_point(&mut b, 0, 9.0, 4); // an old step inside the first bucket is not the last bucket: ignored
        for s in 2..10 {
            push_point(&mut b, s, s as f64, 4);
        }
        assert!(b.len() <= 4);
        assert_eq!(b.last().unwrap().last, 9.0);
        assert_eq!(b.iter().map(|x| x.count).sum::<i64>(), 11);
        assert_eq!(b[0].first_step, 0);
    }
}
