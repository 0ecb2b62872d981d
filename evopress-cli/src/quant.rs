//! The quantization pieces of the CLI (docs/level-schemes.md, docs/baselines.md): opening a GPTQ
//! database as a search backend, the numbers `result.toml` adds for it, `evopress baseline quant`,
//! `evopress bench quant` and the model `evopress eval --quant-config` runs.

use crate::run_config::{BackendSection, RunConfig};
use crate::search::{calibrate, held_out_ppl};
use crate::write_atomically;
use anyhow::{bail, Context, Result};
use evopress_core::search::{dp, Genome, Search};
use evopress_core::{load_model, BlockPlan, CompressionBackend, Model};
use evopress_kernels::cpu::Cpu;
use evopress_kernels::Weight;
use evopress_quant::{QuantBackend, QuantSearchParams};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub fn open_backend(model: &Model, q: &QuantSearchParams) -> Result<QuantBackend> {
    QuantBackend::open(model, q.clone())
        .with_context(|| format!("opening the GPTQ database {}", q.database.display()))
}

/// The numbers of a width assignment that a search result records.
fn stored_table(b: &QuantBackend, ids: &[i32]) -> toml::Table {
    let bytes = b.stored_bytes(ids);
    let numel = b.numel();
    let mut t = toml::Table::new();
    t.insert("average_bits".into(), b.average_bits(ids).into());
    t.insert("weights".into(), (numel as i64).into());
    t.insert("stored_bytes".into(), (bytes as i64).into());
    t.insert(
        "stored_bits_per_weight".into(),
        (8.0 * bytes as f64 / numel as f64).into(),
    );
    t.insert("database_bytes".into(), (b.database_bytes() as i64).into());
    t.insert(
        "original_layout_bytes".into(),
        (b.original_layout_bytes() as i64).into(),
    );
    t
}

/// `[stored]` of `result.toml` for backends that store variants (quant): average bits and the
/// true bytes of the chosen variants (codes, scales, zeros).
pub fn result_extras(
    section: &BackendSection,
    model: &Model,
    ids: &[i32],
) -> Result<Option<toml::Table>> {
    match section {
        BackendSection::Quant(q) => Ok(Some(stored_table(&open_backend(model, q)?, ids))),
        _ => Ok(None),
    }
}

/// A model whose linears are the packed variants a width file names.
pub struct QuantModel {
    pub model: Model,
    pub average_bits: f64,
    pub stored_bytes: u64,
    pub stored_bits_per_weight: f64,
}

pub fn assemble_from_config(model: &Model, database: &Path, config: &Path) -> Result<QuantModel> {
    let b = QuantBackend::open_database(model, database)
        .with_context(|| format!("opening the GPTQ database {}", database.display()))?;
    let ids = b.read_config(config)?;
    let stored_bytes = b.stored_bytes(&ids);
    Ok(QuantModel {
        model: b.assemble_ids(model, &ids)?,
        average_bits: b.average_bits(&ids),
        stored_bytes,
        stored_bits_per_weight: 8.0 * stored_bytes as f64 / b.numel() as f64,
    })
}

#[derive(clap::Args)]
pub struct BaselineArgs {
    /// A quant search config: model, calibration, eval, backend (database, target), output.dir.
    #[arg(long)]
    config: PathBuf,
    /// uniform, random (best of `--candidates` random starts, scored as the search's
    /// initialisation on `initial_tokens` calibration tokens), dp (manifest errors), or all.
    #[arg(long, default_value = "all")]
    method: String,
    /// Random starts scored by `random`.
    #[arg(long, default_value_t = 32)]
    candidates: usize,
    #[arg(long)]
    quiet: bool,
}

/// `evopress baseline quant`: uniform, best-of-N random and DP allocations under the same
/// budget, each written to `<output>/baseline-<method>/` and evaluated from the file.
pub fn baseline(a: BaselineArgs) -> Result<()> {
    let cfg = RunConfig::read(&a.config)?;
    let BackendSection::Quant(q) = &cfg.backend else {
        bail!("`baseline quant` needs a quant config ([backend] kind = \"quant\")");
    };
    let loaded = load_model(&cfg.model.path)
        .with_context(|| format!("loading {}", cfg.model.path.display()))?;
    let model = &loaded.model;
    let backend = open_backend(model, q)?;
    let space = backend.space()?;
    let methods: Vec<&str> = match a.method.as_str() {
        "all" => vec!["uniform", "random", "dp"],
        m @ ("uniform" | "random" | "dp") => vec![m],
        m => bail!("unknown --method `{m}`; expected uniform, random, dp or all"),
    };
    let cal = calibrate(&loaded, &cfg, a.quiet)?;
    let lens = cal.sample_lens();
    let cache_cap = (cfg.fitness.stage_cache_gb * 1e9) as usize;
    let mut rows = Vec::new();
    for name in methods {
        let t0 = Instant::now();
        let genome: Genome = match name {
            "uniform" => {
                let t = q.target_bits;
                let width = t as i32;
                let stored =
                    (0..space.units().len()).all(|u| backend.table().level_ids(u).contains(&width));
                if t.fract() != 0.0 || !stored {
                    println!("{name:>8}  skipped: {t} bits is not a width every layer has");
                    rows.push(serde_json::json!({"method": name, "skipped": format!(
                        "{t} bits is not a width every layer has in the database")}));
                    continue;
                }
                space.genome_from_ids(&vec![width; space.units().len()])?
            }
            "random" => {
                let mut sc = cfg.search.clone();
                sc.initially_generated = a.candidates;
                sc.population_size = 1;
                let search = Search::new(&space, &sc, &lens)?;
                let mut ev =
                    CompressionBackend::<Cpu>::evaluator(&backend, model, &Cpu, &cal, cache_cap);
                search.initialize(&mut ev, &mut ())?.best().clone()
            }
            _ => dp::dp_allocate(&space, &backend.rel_errors(&space))?,
        };
        let seconds = t0.elapsed().as_secs_f64();
        let ids = space.level_ids(&genome);
        let dir = cfg.output.dir.join(format!("baseline-{name}"));
        std::fs::create_dir_all(&dir)?;
        for (file, text) in backend.config_texts(&space, &ids) {
            write_atomically(&dir.join(file), text.as_bytes())?;
        }
        let candidate = CompressionBackend::<Cpu>::load_candidate(&backend, model, &dir)?;
        let ppl = held_out_ppl(&loaded, &cfg.eval, &candidate, a.quiet)?;
        let budget = space.budget_report(&genome);
        let stored = stored_table(&backend, &ids);
        println!(
            "{name:>8}  avg bits {:.4}  budget holds {}  held-out perplexity {:.4}",
            backend.average_bits(&ids),
            budget.holds,
            ppl.perplexity()
        );
        rows.push(serde_json::json!({
            "method": name,
            "target_bits": q.target_bits,
            "count_overhead": q.count_overhead,
            "held_out_perplexity": ppl.perplexity(),
            "tokens_scored": ppl.tokens,
            "seconds": seconds,
            "budget": budget,
            "stored": stored,
            "config": dir.join(evopress_quant::backend::ORIGINAL_CONFIG),
        }));
    }
    std::fs::create_dir_all(&cfg.output.dir)?;
    let path = cfg.output.dir.join("baselines.json");
    write_atomically(&path, serde_json::to_string_pretty(&rows)?.as_bytes())?;
    println!("written {}", path.display());
    Ok(())
}

#[derive(clap::Args)]
pub struct BenchArgs {
    #[arg(long)]
    model: PathBuf,
    /// A GPTQ database built for the model.
    #[arg(long)]
    database: PathBuf,
    /// Widths per layer (original format or TOML); default: every layer at `--bits`.
    #[arg(long)]
    quant_config: Option<PathBuf>,
    #[arg(long, default_value_t = 4)]
    bits: i32,
    #[arg(long, default_value_t = 512)]
    seq_len: usize,
    /// Timed repetitions of each forward (after a warm-up each), interleaved; medians reported.
    #[arg(long, default_value_t = 5)]
    iters: usize,
    #[arg(long)]
    json: bool,
}

/// The model with every unit's weights as owned dense f32 (the reference forward).
fn dense_f32(model: &Model, b: &QuantBackend) -> Model {
    let mut out = model.clone();
    for unit in b.table().units() {
        let w = Weight::from_f32(unit.rows, unit.cols, unit.dense_weight(model));
        evopress_core::build::swap_unit(&mut out.layers[unit.block], unit, &w);
    }
    out
}

/// `evopress bench quant`: tokens/s of the forward with packed weights against the dense f32
/// forward of the same model, alternating so both see the same machine state.
pub fn bench(a: BenchArgs) -> Result<()> {
    let loaded = load_model(&a.model).with_context(|| format!("loading {}", a.model.display()))?;
    let model = &loaded.model;
    let b = QuantBackend::open_database(model, &a.database)
        .with_context(|| format!("opening the GPTQ database {}", a.database.display()))?;
    let ids = match &a.quant_config {
        Some(p) => b.read_config(p)?,
        None => vec![a.bits; b.table().units().len()],
    };
    let quant = b.assemble_ids(model, &ids)?;
    let dense = dense_f32(model, &b);
    let vocab = model.vocab_size() as u32;
    let tokens: Vec<u32> = (0..a.seq_len as u32)
        .map(|i| (i * 7919 + 13) % vocab)
        .collect();
    let plan = vec![BlockPlan::FULL; model.layers.len()];
    let time = |m: &Model| -> Result<f64> {
        let t0 = Instant::now();
        let h = m.hidden_states(&Cpu, &tokens, 1, &plan)?;
        std::hint::black_box(m.lm_head(&Cpu, &h));
        Ok(t0.elapsed().as_secs_f64())
    };
    time(&dense)?;
    time(&quant)?;
    let (mut td, mut tq) = (Vec::new(), Vec::new());
    for _ in 0..a.iters.max(1) {
        td.push(time(&dense)?);
        tq.push(time(&quant)?);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (md, mq) = (median(&mut td), median(&mut tq));
    let n = a.seq_len as f64;
    let stored = b.stored_bytes(&ids);
    let dense_bytes = 4 * b.numel();
    let out = serde_json::json!({
        "seq_len": a.seq_len,
        "threads": rayon::current_num_threads(),
        "average_bits": b.average_bits(&ids),
        "dense_f32_tokens_per_second": n / md,
        "quantized_tokens_per_second": n / mq,
        "quantized_over_dense": md / mq,
        "dense_f32_linear_bytes": dense_bytes,
        "quantized_linear_bytes": stored,
    });
    if a.json {
        println!("{out}");
    } else {
        println!(
            "forward L={} threads={}: dense f32 {:.1} tokens/s, quantized ({:.3} avg bits) \
             {:.1} tokens/s: {:.2}x; linear weights {} -> {} bytes",
            a.seq_len,
            rayon::current_num_threads(),
            n / md,
            b.average_bits(&ids),
            n / mq,
            md / mq,
            dense_bytes,
            stored
        );
    }
    Ok(())
}
