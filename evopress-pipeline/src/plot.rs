//! The search's convergence as a standalone SVG (best fitness per generation, the baselines'
//! fitness as horizontal lines), so a run's directory can be inspected without any plotting
//! tool.

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

    let mut svg = String::new();
    writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    )?;
    writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#)?;
    writeln!(
        svg,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">Best fitness per generation (lower is better)</text>"#,
        W / 2.0
    )?;
    // Axes with min/max ticks.
    writeln!(
        svg,
        r#"<line x1="{PAD}" y1="{b}" x2="{r}" y2="{b}" stroke="black"/><line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{b}" stroke="black"/>"#,
        b = H - PAD,
        r = W - RIGHT
    )?;
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
