//! A server-rendered SVG bar chart of an account's daily added, updated and deleted counts.
//! Inline in the dashboard: no script, no external asset. A day with an unusual number of
//! deletions is shaded and labelled.

use crate::health::Day;
use crate::providers::text::escape_markup;

const W: f64 = 760.0;
const H: f64 = 220.0;
const LEFT: f64 = 48.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 28.0;

/// Colours of the three series: added, updated, deleted.
pub const COLOURS: [&str; 3] = ["#2e7d32", "#1565c0", "#c62828"];

/// The chart of `days` (oldest first); `unusual[i]` marks day `i`'s deletions.
pub fn svg(account: &str, days: &[Day], unusual: &[bool]) -> String {
    let series = |d: &Day| {
        [
            d.raw.added_to_crm + d.raw.added_to_provider,
            d.raw.updated_in_crm + d.raw.updated_in_provider,
            d.raw.deleted_from_provider,
        ]
    };
    let max = days
        .iter()
        .flat_map(|d| series(d).into_iter())
        .max()
        .unwrap_or(0)
        .max(1);
    // A round number at or above the maximum, so the axis label reads well.
    let step = 10f64.powi((max as f64).log10().floor() as i32).max(1.0);
    let top = ((max as f64 / step).ceil() * step).max(1.0);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let n = days.len().max(1) as f64;
    let slot = plot_w / n;
    let bar = (slot * 0.8 / 3.0).max(1.0);
    let y = |v: f64| TOP + plot_h - v / top * plot_h;
    let mut out = format!(
        "<svg class=\"chart\" role=\"img\" aria-label=\"Added, updated and deleted per day for {a}\" \
         xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" \
         font-family=\"system-ui, sans-serif\" font-size=\"12\">\n\
         <title>{a}: added, updated and deleted per day</title>\n",
        a = escape_markup(account)
    );
    // Legend.
    for (i, (label, colour)) in ["added", "updated", "deleted"]
        .iter()
        .zip(COLOURS)
        .enumerate()
    {
        let x = LEFT + i as f64 * 90.0;
        out.push_str(&format!(
            "<rect x=\"{x}\" y=\"8\" width=\"12\" height=\"12\" fill=\"{colour}\"/>\
             <text x=\"{}\" y=\"19\" fill=\"#222\">{label}</text>\n",
            x + 16.0
        ));
    }
    // Axes and gridlines at 0, half and the top.
    for frac in [0.0, 0.5, 1.0] {
        let v = top * frac;
        let yy = y(v);
        out.push_str(&format!(
            "<line x1=\"{LEFT}\" y1=\"{yy:.1}\" x2=\"{}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#555\">{}</text>\n",
            W - RIGHT,
            LEFT - 6.0,
            yy + 4.0,
            v.round() as u64
        ));
    }
    for (i, d) in days.iter().enumerate() {
        let x0 = LEFT + i as f64 * slot;
        if unusual.get(i).copied().unwrap_or(false) {
            out.push_str(&format!(
                "<rect class=\"unusual\" x=\"{x0:.1}\" y=\"{TOP}\" width=\"{slot:.1}\" height=\"{plot_h:.1}\" fill=\"#fdecea\" stroke=\"#c62828\" stroke-dasharray=\"3 2\"><title>{}: unusual number of deletions</title></rect>\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#c62828\" font-weight=\"bold\">{} deleted</text>\n",
                escape_markup(&d.date),
                (x0 + slot / 2.0).clamp(LEFT + 30.0, W - RIGHT - 30.0),
                TOP - 2.0,
                d.raw.deleted_from_provider
            ));
        }
        for (k, v) in series(d).into_iter().enumerate() {
            if v == 0 {
                continue;
            }
            let x = x0 + slot * 0.1 + k as f64 * bar;
            let yy = y(v as f64);
            out.push_str(&format!(
                "<rect x=\"{x:.1}\" y=\"{yy:.1}\" width=\"{bar:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{}: {} {}</title></rect>\n",
                (TOP + plot_h - yy).max(0.5),
                COLOURS[k],
                escape_markup(&d.date),
                v,
                ["added", "updated", "deleted"][k]
            ));
        }
        if i % 5 == 0 || i + 1 == days.len() {
            out.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#555\">{}</text>\n",
                x0 + slot / 2.0,
                H - 8.0,
                escape_markup(d.date.get(5..).unwrap_or(&d.date))
            ));
        }
    }
    out.push_str(&format!(
        "<line x1=\"{LEFT}\" y1=\"{b:.1}\" x2=\"{}\" y2=\"{b:.1}\" stroke=\"#888\"/>\n</svg>",
        W - RIGHT,
        b = TOP + plot_h
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DayMetrics;

    fn day(date: &str, added: u64, deleted: u64) -> Day {
        let raw = DayMetrics {
            added_to_crm: added,
            deleted_from_provider: deleted,
            ..Default::default()
        };
        Day {
            date: date.into(),
            metrics: crate::api::today_json(&raw),
            raw,
        }
    }

    #[test]
    fn chart_draws_a_bar_per_nonzero_value_and_marks_unusual_deletions() {
        let days = vec![
            day("2026-11-01", 3, 0),
            day("2026-11-02", 0, 0),
            day("2026-11-03", 1, 120),
        ];
        let svg = svg("sales", &days, &[false, false, true]);
        assert!(svg.starts_with("<svg"));
        assert!(svg.ends_with("</svg>"));
        assert!(svg.contains("2026-11-01: 3 added"));
        assert!(svg.contains("2026-11-03: 120 deleted"));
        assert_eq!(svg.matches("class=\"unusual\"").count(), 1);
        assert!(svg.contains("120 deleted</text>"));
        assert!(!svg.contains("script"));
        assert!(!svg.contains("http://") || svg.matches("http://").count() == 1);
        // xmlns only
    }
}
