//! One-shot baselines of any method (docs/baselines.md): computed on calibration tokens,
//! scored on held-out text, compared with a search's result; and `evopress baseline`.

use crate::config::{split_kind, RunConfig};
use crate::progress;
use crate::session::Session;
use evopress_core::evaluate::Calibration;
use evopress_core::fsutil::{write_atomically, DirLock};
use evopress_core::held_out::{DenseReference, HeldOutScore};
use evopress_core::method::find_method;
use evopress_core::{BaselineContext, Candidate, CompressionBackend, Error, Method, Result};
use evopress_kernels::Device;
use evopress_search::{Genome, TokenBatch};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// A baseline's choice as a run keeps it: the genome when it is one of the space's, and what
/// the baseline measured. The candidate itself is rebuilt from the genome when needed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Computed {
    pub name: String,
    pub genome: Option<Genome>,
    pub detail: toml::Table,
    pub seconds: f64,
    /// The model when it is not the genome's (a choice outside the space).
    #[serde(skip)]
    pub candidate: Option<Candidate>,
}

/// One baseline's line in `result.toml` / `baselines.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BaselineRow {
    pub name: String,
    pub held_out_perplexity: f64,
    /// Mean per-token KL(dense || baseline) on the held-out windows, in nats (absent from
    /// rows written before it was measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_out_kl: Option<f64>,
    pub tokens_scored: usize,
    /// Whether the search's result has strictly lower held-out perplexity (absent outside a
    /// search).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search_beats: Option<bool>,
    /// Whether the search's result has strictly lower held-out KL to the dense model (absent
    /// outside a search).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search_beats_kl: Option<bool>,
    /// The baseline chose exactly the search's result.
    #[serde(default)]
    pub same_as_search: bool,
    pub seconds: f64,
    /// The budget and the method's report of the choice, where it is a genome of the space.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<evopress_search::BudgetReport>,
    #[serde(default)]
    pub report: toml::Table,
    pub detail: toml::Table,
}

/// Runs the baselines `names` of `backend` on `batch`.
pub fn compute(
    session: &Session,
    backend: &dyn CompressionBackend,
    cal: &Calibration,
    batch: &TokenBatch,
    names: &[String],
) -> Result<Vec<Computed>> {
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let t0 = Instant::now();
        let bar = progress::bar(0, &format!("baseline {name}"), session.quiet);
        let progress = |done: usize, total: usize| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        };
        let ctx = BaselineContext {
            model: &session.loaded.model,
            dev: session.dev,
            cal,
            batch,
            progress: &progress,
        };
        let b = backend.baseline(name, &ctx)?;
        bar.finish_and_clear();
        out.push(Computed {
            name: b.name,
            candidate: b.genome.is_none().then_some(b.candidate),
            genome: b.genome,
            detail: b.detail,
            seconds: t0.elapsed().as_secs_f64(),
        });
    }
    Ok(out)
}

/// The baselines saved in `path` (a resumed search's), recomputing those whose model is not a
/// genome of the space; every cheap baseline when the file is missing.
pub fn load_or_compute(
    path: &Path,
    session: &Session,
    backend: &dyn CompressionBackend,
    cal: &Calibration,
    batch: &TokenBatch,
) -> Result<Vec<Computed>> {
    let saved: Option<Vec<Computed>> = match std::fs::read(path) {
        Ok(bytes) => Some(
            serde_json::from_slice(&bytes)
                .map_err(|e| Error::format(path, format!("not a baseline list: {e}")))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(path, e)),
    };
    let Some(saved) = saved else {
        let names: Vec<String> = (backend.baselines().into_iter())
            .filter(|b| b.cheap)
            .map(|b| b.name)
            .collect();
        return compute(session, backend, cal, batch, &names);
    };
    let mut out = Vec::with_capacity(saved.len());
    for c in saved {
        if c.genome.is_some() {
            out.push(c);
        } else {
            out.extend(compute(session, backend, cal, batch, &[c.name])?);
        }
    }
    Ok(out)
}

/// Held-out perplexity and KL to the dense model of each baseline (once per distinct model),
/// compared with the search's `(genome, score)` when given.
pub fn score_held_out(
    session: &Session,
    backend: &dyn CompressionBackend,
    computed: &[Computed],
    reference: &DenseReference,
    search: Option<(&Genome, &HeldOutScore)>,
) -> Result<Vec<BaselineRow>> {
    let mut scored: Vec<(Genome, HeldOutScore)> = Vec::new();
    let mut rows = Vec::with_capacity(computed.len());
    for c in computed {
        let same_as_search = search.is_some_and(|(g, _)| c.genome.as_ref() == Some(g));
        let known = (c.genome.as_ref())
            .and_then(|g| scored.iter().find(|(s, _)| s == g))
            .map(|(_, score)| *score);
        let (budget, report) = match &c.genome {
            Some(g) => {
                let candidate = backend.candidate(&session.loaded.model, g)?;
                let space = backend.space();
                (
                    Some(space.budget_report(g)),
                    backend.report(g, &candidate)?.fields,
                )
            }
            None => (None, toml::Table::new()),
        };
        let score = match (known, same_as_search, search) {
            (Some(k), _, _) => k,
            (None, true, Some((_, score))) => *score,
            _ => {
                let candidate = match (&c.candidate, &c.genome) {
                    (Some(candidate), _) => candidate.clone(),
                    (None, Some(g)) => backend.candidate(&session.loaded.model, g)?,
                    (None, None) => {
                        return Err(Error::Invalid(format!(
                            "baseline `{}` has neither a genome nor a model",
                            c.name
                        )))
                    }
                };
                let score =
                    session.score(reference, &candidate, &format!("held-out {}", c.name))?;
                if let Some(g) = &c.genome {
                    scored.push((g.clone(), score));
                }
                score
            }
        };
        rows.push(BaselineRow {
            name: c.name.clone(),
            held_out_perplexity: score.perplexity(),
            held_out_kl: Some(score.kl()),
            tokens_scored: score.nll.tokens,
            search_beats: search.map(|(_, s)| s.perplexity() < score.perplexity()),
            search_beats_kl: search.map(|(_, s)| s.kl() < score.kl()),
            same_as_search,
            seconds: c.seconds,
            budget,
            report,
            detail: c.detail.clone(),
        });
    }
    Ok(rows)
}

/// Which baselines `evopress baseline` runs.
#[derive(Clone, Debug)]
pub enum Selection {
    /// The cheap ones (what a search seeds from).
    Cheap,
    /// Every baseline the method offers.
    All,
    /// These, by name.
    Named(Vec<String>),
}

/// `evopress baseline`: the baselines of a search config's method on its model, calibration
/// and held-out text. Writes `<output>/baselines.json` (rows accumulate over runs: a method's
/// new row replaces its old one) and each baseline's config files under
/// `<output>/baseline-<name>/` where it is a genome of the space.
pub fn run_baselines(
    methods: &[&dyn Method],
    config: &Path,
    dev: &dyn Device,
    selection: &Selection,
    quiet: bool,
) -> Result<Vec<BaselineRow>> {
    let cfg = RunConfig::read(config)?;
    let (kind, section) = split_kind(&cfg.backend, "[backend]")?;
    let method = find_method(methods, &kind)?;
    let out = &cfg.output.dir;
    let _lock = DirLock::acquire(out, "writing baselines")?;
    let session = Session::open(&cfg.model, dev, quiet)?;
    let backend = method.open(&section, &session.loaded.model)?;
    let offered = backend.baselines();
    let names: Vec<String> = match selection {
        Selection::Cheap => offered
            .iter()
            .filter(|b| b.cheap)
            .map(|b| b.name.clone())
            .collect(),
        Selection::All => offered.iter().map(|b| b.name.clone()).collect(),
        Selection::Named(names) => {
            for n in names {
                if !offered.iter().any(|b| &b.name == n) {
                    let known: Vec<&str> = offered.iter().map(|b| b.name.as_str()).collect();
                    return Err(Error::Invalid(format!(
                        "method `{kind}` has no baseline `{n}` here; it has {}",
                        known.join(", ")
                    )));
                }
            }
            names.clone()
        }
    };
    let held_out = session.held_out_windows(&cfg.eval)?;
    let reference = session.dense_reference(held_out)?;
    let cal = session.calibrate(&cfg.calibration, &cfg.fitness, Some(out))?;
    let batch = cfg.baselines.batch(&cal.sample_lens());
    let computed = compute(&session, backend.as_ref(), &cal, &batch, &names)?;
    for c in &computed {
        if let Some(g) = &c.genome {
            let dir = out.join(format!("baseline-{}", c.name));
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            for (file, text) in backend.config_files(g)? {
                write_atomically(&dir.join(file), text.as_bytes())?;
            }
        }
    }
    let rows = score_held_out(&session, backend.as_ref(), &computed, &reference, None)?;
    let path = out.join("baselines.json");
    let mut all: Vec<BaselineRow> = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    all.retain(|old| rows.iter().all(|r| r.name != old.name));
    all.extend(rows.iter().cloned());
    let json = serde_json::to_vec_pretty(&all).expect("rows serialize");
    write_atomically(&path, &json)?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::Computed;

    /// A resumed run scores the baselines it saved in `seeds.json`; their numbers must read
    /// back bit-exactly or its `result.toml` differs from the uninterrupted run's.
    #[test]
    fn saved_baselines_read_back_bit_exactly() {
        let values = [0.19062625081016002, 0.1_f64 + 0.2, 1.0 / 3.0, 4.5e-17];
        let mut detail = toml::Table::new();
        detail.insert(
            "scores".into(),
            toml::Value::Array(values.iter().map(|&v| toml::Value::Float(v)).collect()),
        );
        let computed = Computed {
            name: "kl".into(),
            genome: None,
            detail,
            seconds: 0.1,
            candidate: None,
        };
        let json = serde_json::to_vec(&[&computed]).unwrap();
        let back: Vec<Computed> = serde_json::from_slice(&json).unwrap();
        let scores = back[0].detail["scores"].as_array().unwrap();
        for (v, s) in values.iter().zip(scores) {
            assert_eq!(v.to_bits(), s.as_float().unwrap().to_bits());
        }
    }
}
