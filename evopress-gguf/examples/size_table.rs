//! The table and plots of docs/gguf-search.md ("Measured on the demo model"): every llama.cpp
//! preset and every search of the given run directories, by GGUF file size, with held-out
//! perplexity and KL to the dense model.
//!
//! ```sh
//! cargo run --release -p evopress-gguf --example size_table -- \
//!     --model assets/smollm2-135m-instruct.gguf --overhead BYTES --svg docs/gguf-heldout \
//!     runs/gguf-heldout-q3-k-m runs/gguf-heldout-q4-k-m
//! ```
//!
//! Reads each directory's `result.toml` (a search, its baselines) and `baselines.json`
//! (`evopress baseline`). A GGUF file's size is its searched tensors' bytes plus `--overhead`,
//! the bytes nothing searched changes (the F32 norms, metadata, alignment padding), measured
//! once as a converted file's size minus its tensor bytes. Bits per weight are counted as
//! llama.cpp prints them: every tensor's data bits (the searched ones plus the F32 norms,
//! which are `--model`'s F32 tensors) over every tensor's elements, metadata left out.
//! Prints a Markdown table; writes `<svg>-perplexity.svg` and `<svg>-kl.svg`.

use anyhow::{bail, Context, Result};
use evopress_core::gguf::{GgmlType, GgufFile};
use evopress_pipeline::plot::{points_svg, Series};
use evopress_pipeline::{BaselineRow, ResultFile};
use std::path::{Path, PathBuf};

/// One row of the table.
struct Row {
    label: String,
    search: bool,
    tensor_bytes: u64,
    perplexity: f64,
    kl: f64,
}

fn tensor_bytes(table: &toml::Table, what: &str) -> Result<u64> {
    let v = table
        .get("tensor_bytes")
        .and_then(toml::Value::as_integer)
        .with_context(|| format!("{what}: no integer `tensor_bytes`"))?;
    Ok(v as u64)
}

fn preset_row(b: &BaselineRow) -> Result<Option<Row>> {
    let Some(preset) = b.name.strip_prefix("preset-") else {
        return Ok(None);
    };
    let kl = (b.held_out_kl)
        .with_context(|| format!("baseline `{}` has no held_out_kl: rerun it", b.name))?;
    Ok(Some(Row {
        label: preset.into(),
        search: false,
        tensor_bytes: tensor_bytes(&b.detail, &b.name)?,
        perplexity: b.held_out_perplexity,
        kl,
    }))
}

/// The rows of one run directory, and the dense perplexity when it holds a search.
fn read_run(dir: &Path) -> Result<(Vec<Row>, Option<f64>)> {
    let mut rows = Vec::new();
    let mut dense = None;
    let result = dir.join("result.toml");
    if result.exists() {
        let text = std::fs::read_to_string(&result)?;
        let r: ResultFile =
            toml::from_str(&text).with_context(|| format!("{}", result.display()))?;
        let target = (r.baselines.iter())
            .find_map(|b| b.name.strip_prefix("preset-"))
            .unwrap_or("?");
        rows.push(Row {
            label: format!("search at {target}"),
            search: true,
            tensor_bytes: tensor_bytes(&r.report, &result.display().to_string())?,
            perplexity: r.held_out.compressed_perplexity,
            kl: r.held_out.compressed_kl,
        });
        for b in &r.baselines {
            rows.extend(preset_row(b)?);
        }
        dense = Some(r.held_out.dense_perplexity);
    }
    let json = dir.join("baselines.json");
    if json.exists() {
        let bytes = std::fs::read(&json)?;
        let saved: Vec<BaselineRow> =
            serde_json::from_slice(&bytes).with_context(|| format!("{}", json.display()))?;
        for b in &saved {
            rows.extend(preset_row(b)?);
        }
    }
    Ok((rows, dense))
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut model, mut overhead, mut svg, mut dirs) = (None, None, None, Vec::new());
    while let Some(a) = args.next() {
        match a.as_str() {
            "--model" => model = args.next().map(PathBuf::from),
            "--overhead" => overhead = Some(args.next().context("--overhead BYTES")?.parse()?),
            "--svg" => svg = args.next(),
            _ => dirs.push(PathBuf::from(a)),
        }
    }
    let (Some(model), Some(overhead), Some(svg)) = (model, overhead, svg) else {
        bail!("usage: size_table --model GGUF --overhead BYTES --svg STEM RUN_DIR...");
    };
    let overhead: u64 = overhead;
    let source = GgufFile::open(&model)?;
    let tensors = source.tensors();
    let elements: u64 = tensors.iter().map(|t| t.numel()).sum();
    let data_bytes = |keep: &dyn Fn(GgmlType) -> bool| -> Result<u64> {
        (tensors.iter().filter(|t| keep(t.ggml_type)))
            .map(|t| {
                t.n_bytes()
                    .with_context(|| format!("tensor {}: size", t.name))
            })
            .sum()
    };
    let norms = data_bytes(&|t| t == GgmlType::F32)?;
    let bpw = |tensor_bytes: u64| tensor_bytes as f64 * 8.0 / elements as f64;

    let mut rows: Vec<Row> = Vec::new();
    let mut dense = None;
    for dir in &dirs {
        let (found, d) = read_run(dir).with_context(|| format!("run {}", dir.display()))?;
        for r in found {
            // The same preset scored by several runs: same windows, same model, same numbers.
            if !r.search && rows.iter().any(|o| !o.search && o.label == r.label) {
                continue;
            }
            rows.push(r);
        }
        dense = dense.or(d);
    }
    rows.sort_by_key(|r| (r.tensor_bytes, r.search));

    let mb = |r: &Row| (r.tensor_bytes + overhead) as f64 / 1e6;
    println!("| model | tensor bytes | file bytes | bits per weight | held-out perplexity | KL to dense |");
    println!("|---|---|---|---|---|---|");
    if let Some(d) = dense {
        let size = std::fs::metadata(&model)?.len();
        println!(
            "| source file (the dense reference) | | {size} | {:.3} | {d:.3} | 0 |",
            bpw(data_bytes(&|_| true)?)
        );
    }
    for r in &rows {
        let file = r.tensor_bytes + overhead;
        let bold = |s: String| if r.search { format!("**{s}**") } else { s };
        println!(
            "| {} | {} | {file} | {:.3} | {} | {} |",
            bold(r.label.clone()),
            r.tensor_bytes,
            bpw(r.tensor_bytes + norms),
            bold(format!("{:.3}", r.perplexity)),
            bold(format!("{:.5}", r.kl)),
        );
    }

    for (metric, y_label, y) in [
        (
            "perplexity",
            "held-out perplexity",
            (|r: &Row| r.perplexity) as fn(&Row) -> f64,
        ),
        ("kl", "held-out KL to dense (nats/token)", |r: &Row| r.kl),
    ] {
        let points = |search: bool| {
            (rows.iter().filter(|r| r.search == search))
                .map(|r| (r.label.clone(), mb(r), y(r)))
                .collect()
        };
        let mut series = vec![
            Series {
                name: "llama.cpp presets".into(),
                points: points(false),
                joined: true,
            },
            Series {
                name: "search at a preset's size".into(),
                points: points(true),
                joined: false,
            },
        ];
        if let Some(d) = dense {
            let size = std::fs::metadata(&model)?.len() as f64 / 1e6;
            let y = if metric == "kl" { 0.0 } else { d };
            series.push(Series {
                name: "source file: the dense reference".into(),
                points: vec![("source".into(), size, y)],
                joined: false,
            });
        }
        let path = PathBuf::from(format!("{svg}-{metric}.svg"));
        points_svg(
            &path,
            &format!("SmolLM2-135M GGUF: {y_label} against file size"),
            "GGUF file size (MB)",
            y_label,
            &series,
        )?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
