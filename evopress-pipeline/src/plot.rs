//! Standalone SVG plots, so a run can be inspected without any plotting tool: the search's
//! convergence (best fitness per generation, the baselines' fitness as horizontal lines), and
//! labelled points against a size (a method's results beside a family of presets).

use evopress_core::fsutil::write_atomically;
use evopress_core::Result;
use evopress_search::GenerationRecord;
use std::fmt::Write;
use std::path::Path;

const W: f64 = 900.0;
/// Room right of the plot for the legend.
const RIGHT: f64 = 240.0;
const H: f64 = 400.0;
const PAD: f64 = 60.0;

/// Colours of the baselines' lines, in turn.
const COLOURS: [&str; 6] = [
    "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

/// Writes the plot: `history`'s best fitness per generation and `lines` (name, fitness) as
/// dashed horizontal lines with a legend.
pub fn convergence_svg(
    path: &Path,
    history: &[GenerationRecord],
    lines: &[(String, f64)],
) -> Result<()> {
    let svg = render(history, lines).expect("writing to a String cannot fail");
    write_atomically(path, svg.as_bytes())
}

/// The start of every plot: the SVG element on a white page, `title` centred at `title_x`,
/// and the two axes.
fn open_svg(title: &str, title_x: f64) -> std::result::Result<String, std::fmt::Error> {
    let mut svg = String::new();
    writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    )?;
    writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#)?;
    writeln!(
        svg,
        r#"<text x="{title_x}" y="24" text-anchor="middle" font-size="15">{title}</text>"#
    )?;
    writeln!(
        svg,
        r#"<line x1="{PAD}" y1="{b}" x2="{r}" y2="{b}" stroke="black"/><line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{b}" stroke="black"/>"#,
        b = H - PAD,
        r = W - RIGHT
    )?;
    Ok(svg)
}

fn render(
    history: &[GenerationRecord],
    lines: &[(String, f64)],
) -> std::result::Result<String, std::fmt::Error> {
    let pts: Vec<(f64, f64)> = history
        .iter()
        .map(|r| (r.generation as f64, r.best_fitness))
        .collect();
    let (x0, x1) = (0.0, pts.iter().map(|p| p.0).fold(1.0, f64::max));
    let values = pts.iter().map(|p| p.1).chain(lines.iter().map(|l| l.1));
    let lo = values.clone().fold(f64::INFINITY, f64::min);
    let hi = values.fold(f64::NEG_INFINITY, f64::max);
    let (y0, y1) = if hi > lo {
        (lo, hi)
    } else {
        (lo - 1.0, lo + 1.0)
    };
    let sx = |x: f64| PAD + (x - x0) / (x1 - x0) * (W - PAD - RIGHT);
    let sy = |y: f64| H - PAD - (y - y0) / (y1 - y0) * (H - 2.0 * PAD);

    let mut svg = open_svg("Best fitness per generation (lower is better)", W / 2.0)?;
    // Min/max ticks.
    writeln!(
        svg,
        r#"<text x="{PAD}" y="{}" text-anchor="middle">{x0}</text><text x="{}" y="{}" text-anchor="middle">{x1}</text>"#,
        H - PAD + 18.0,
        W - RIGHT,
        H - PAD + 18.0
    )?;
    writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">generation</text>"#,
        W / 2.0,
        H - 15.0
    )?;
    writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="end">{y1:.4}</text><text x="{}" y="{}" text-anchor="end">{y0:.4}</text>"#,
        PAD - 6.0,
        sy(y1) + 4.0,
        PAD - 6.0,
        sy(y0) + 4.0
    )?;
    let line: Vec<String> = pts
        .iter()
        .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
        .collect();
    writeln!(
        svg,
        r##"<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{}"/>"##,
        line.join(" ")
    )?;
    for &(x, y) in &pts {
        writeln!(
            svg,
            r##"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="#1f77b4"/>"##,
            sx(x),
            sy(y)
        )?;
    }
    for (i, (name, y)) in lines.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        writeln!(
            svg,
            r#"<line x1="{PAD}" y1="{y:.1}" x2="{r}" y2="{y:.1}" stroke="{colour}" stroke-dasharray="6,4"/>"#,
            y = sy(*y),
            r = W - RIGHT
        )?;
        writeln!(
            svg,
            r#"<text x="{x}" y="{ty}" fill="{colour}" font-size="11">{name} {v:.4}</text>"#,
            x = W - RIGHT + 8.0,
            ty = PAD + 14.0 * i as f64,
            v = y
        )?;
    }
    writeln!(svg, "</svg>")?;
    Ok(svg)
}

/// One set of labelled points on a [`points_svg`] plot.
pub struct Series {
    pub name: String,
    /// `(label, x, y)`; the label is written beside the point.
    pub points: Vec<(String, f64, f64)>,
    /// Join the points (in x order) with a line: a family such as llama.cpp's presets.
    pub joined: bool,
}

/// Writes a scatter plot of `series` (for example perplexity against file size), each in its
/// own colour, joined series as lines with dots, the others as large squares, with a legend.
pub fn points_svg(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<()> {
    let svg = render_points(title, x_label, y_label, series).expect("writing to a String");
    write_atomically(path, svg.as_bytes())
}

/// `(lo, hi)` of `values` widened by 5% on each side (or by 1 when they are all equal).
fn padded_range(values: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let lo = values.clone().fold(f64::INFINITY, f64::min);
    let hi = values.fold(f64::NEG_INFINITY, f64::max);
    if hi > lo {
        let pad = 0.05 * (hi - lo);
        (lo - pad, hi + pad)
    } else {
        (lo - 1.0, lo + 1.0)
    }
}

fn render_points(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> std::result::Result<String, std::fmt::Error> {
    let all = || series.iter().flat_map(|s| s.points.iter());
    let (x0, x1) = padded_range(all().map(|p| p.1));
    let (y0, y1) = padded_range(all().map(|p| p.2));
    let sx = |x: f64| PAD + (x - x0) / (x1 - x0) * (W - PAD - RIGHT);
    let sy = |y: f64| H - PAD - (y - y0) / (y1 - y0) * (H - 2.0 * PAD);

    let mut svg = open_svg(title, (W - RIGHT + PAD) / 2.0)?;
    for i in 0..=4 {
        let (x, y) = (
            x0 + (x1 - x0) * i as f64 / 4.0,
            y0 + (y1 - y0) * i as f64 / 4.0,
        );
        writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{x:.1}</text><text x="{:.1}" y="{:.1}" text-anchor="end">{y:.3}</text>"#,
            sx(x),
            H - PAD + 18.0,
            PAD - 6.0,
            sy(y) + 4.0
        )?;
    }
    writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">{x_label}</text>"#,
        (W - RIGHT + PAD) / 2.0,
        H - 15.0
    )?;
    writeln!(
        svg,
        r#"<text x="16" y="{c}" text-anchor="middle" transform="rotate(-90 16 {c})">{y_label}</text>"#,
        c = H / 2.0
    )?;
    for (i, s) in series.iter().enumerate() {
        let colour = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"][i % 5];
        let mut pts: Vec<&(String, f64, f64)> = s.points.iter().collect();
        pts.sort_by(|a, b| a.1.total_cmp(&b.1));
        if s.joined {
            let line: Vec<String> = (pts.iter())
                .map(|p| format!("{:.1},{:.1}", sx(p.1), sy(p.2)))
                .collect();
            writeln!(
                svg,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
                line.join(" ")
            )?;
        }
        for (label, x, y) in pts {
            let (cx, cy) = (sx(*x), sy(*y));
            if s.joined {
                writeln!(
                    svg,
                    r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="3.5" fill="{colour}"/>"#
                )?;
            } else {
                writeln!(
                    svg,
                    r#"<rect x="{:.1}" y="{:.1}" width="10" height="10" fill="{colour}"/>"#,
                    cx - 5.0,
                    cy - 5.0
                )?;
            }
            writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" fill="{colour}" font-size="10">{label}</text>"#,
                cx + 7.0,
                cy - 7.0
            )?;
        }
        writeln!(
            svg,
            r#"<text x="{x}" y="{ty}" fill="{colour}" font-size="11">{} {}</text>"#,
            if s.joined { "●—" } else { "■" },
            s.name,
            x = W - RIGHT + 8.0,
            ty = PAD + 16.0 * i as f64,
        )?;
    }
    writeln!(svg, "</svg>")?;
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_land_inside_the_axes_with_their_labels() {
        let series = [
            Series {
                name: "presets".into(),
                points: vec![("B".into(), 2.0, 30.0), ("A".into(), 1.0, 40.0)],
                joined: true,
            },
            Series {
                name: "search".into(),
                points: vec![("S".into(), 1.5, 31.0)],
                joined: false,
            },
        ];
        let svg = render_points("t", "x", "y", &series).unwrap();
        assert_eq!(svg.matches("<circle").count(), 2);
        assert_eq!(svg.matches("<rect x=").count(), 1);
        assert!(svg.contains(">A</text>") && svg.contains(">S</text>"));
        // The polyline runs in x order: A (x 1) first, at the top-left (largest y value).
        let line = svg.split("points=\"").nth(1).unwrap();
        let first: Vec<f64> = (line.split(' ').next().unwrap().split(','))
            .map(|v| v.parse().unwrap())
            .collect();
        assert!(first[0] < W / 2.0 && first[1] < H / 2.0, "{first:?}");
    }

    #[test]
    fn convergence_has_the_curve_and_one_dashed_line_per_baseline() {
        let history: Vec<GenerationRecord> = [0.9, 0.7, 0.75]
            .iter()
            .enumerate()
            .map(|(generation, &best_fitness)| GenerationRecord {
                generation,
                best_fitness,
                evaluations: 8,
                tokens: 512,
                seconds: 1.0,
                seeds: Vec::new(),
            })
            .collect();
        let lines = [("uniform".to_string(), 0.8), ("dp".to_string(), 1.1)];
        let svg = render(&history, &lines).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("Best fitness per generation"));
        assert_eq!(svg.matches("stroke-dasharray").count(), 2, "{svg}");
        assert!(svg.contains(">uniform") && svg.contains(">dp"));
    }
}
