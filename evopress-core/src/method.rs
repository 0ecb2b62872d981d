//! The seam between the tool and a compression method (docs/adding-a-backend.md).
//!
//! A method is a crate that implements [`Method`] and is listed once in the binary's registry.
//! Everything method-specific lives behind this trait: reading its `[backend]` and
//! `[database]` sections, building its variant database, the search space and fitness of its
//! genomes, its result files and report fields, its baselines, and turning a result file back
//! into a runnable model for `eval` and `convert`. The pipeline around a search (calibration,
//! dense targets, the search itself, held-out evaluation, result files) knows only this trait.

use crate::build::VariantBuilder;
use crate::error::{Error, Result};
use crate::evaluate::Calibration;
use crate::model::{BlockPlan, Model};
use evopress_kernels::Device;
use evopress_search::{Evaluator, Genome, SearchSpace, TokenBatch};
use serde::de::DeserializeOwned;
use std::path::Path;

/// A compression method as the tool registers it.
pub trait Method: Sync {
    /// The `[backend] kind` it answers to; also its name in result files (`depth`, `sparse`).
    fn name(&self) -> &'static str;

    /// One line for listings: what it compresses and how.
    fn about(&self) -> &'static str;

    /// The search backend described by a `[backend]` table (without `kind`) for `model`:
    /// unknown keys and bad values are errors naming the key.
    fn open(&self, section: &toml::Table, model: &Model) -> Result<Box<dyn CompressionBackend>>;

    /// The `[database] kind`s this method builds (`sparsegpt`, `gptq`); none by default.
    fn database_kinds(&self) -> &'static [&'static str] {
        &[]
    }

    /// The builder of a `[database]` of one of [`database_kinds`](Self::database_kinds), from
    /// the section's parameters (without `kind` and `dir`).
    fn database_builder(
        &self,
        kind: &str,
        params: &toml::Table,
        ctx: &BuildContext,
    ) -> Result<Box<dyn VariantBuilder>> {
        let _ = (params, ctx);
        Err(Error::Invalid(format!(
            "method `{}` builds no `{kind}` database",
            self.name()
        )))
    }

    /// The `eval`/`convert` flag that applies one of this method's result files; `None` for
    /// a method whose results another method's flag reads (a database builder whose variants
    /// share a format).
    fn config_flag(&self) -> Option<ConfigFlag>;

    /// Applies a result file (the original EvoPress format or ours) to `candidate`: a drop
    /// plan, or linears swapped for variants of `database`. Returns what it measured.
    fn apply_config(
        &self,
        candidate: &mut Candidate,
        file: &Path,
        database: Option<&Path>,
    ) -> Result<Report>;
}

/// A method's flag on `eval` and `convert`: `--<long> FILE`.
#[derive(Clone, Copy, Debug)]
pub struct ConfigFlag {
    pub long: &'static str,
    pub help: &'static str,
    /// Whether the file names levels of a variant database (then `--database` is required).
    pub needs_database: bool,
}

/// What a database builder may need beyond the Hessians: OWL's first pass runs the model over
/// the calibration windows.
pub struct BuildContext<'a> {
    pub model: &'a Model,
    pub dev: &'a dyn Device,
    pub windows: &'a [Vec<u32>],
    /// `(done, total)` of a pre-pass, for a progress bar.
    pub progress: &'a dyn Fn(&str, usize, usize),
}

/// One search run's view of a method: its space, the fitness of its genomes, its files.
pub trait CompressionBackend: Sync {
    /// The method's name.
    fn name(&self) -> &'static str;

    /// Units, ordered levels with costs, budget groups and legality.
    fn space(&self) -> &SearchSpace;

    /// The fitness of genomes on calibration tokens against the dense targets. Evaluators
    /// cache the stage parent's activations up to `cache_cap_bytes` and run each candidate from
    /// the first block it changes.
    fn evaluator<'a>(
        &'a self,
        model: &'a Model,
        dev: &'a dyn Device,
        cal: &'a Calibration,
        cache_cap_bytes: usize,
    ) -> Result<Box<dyn Evaluator + 'a>>;

    /// The runnable model a genome stands for.
    fn candidate(&self, model: &Model, genome: &Genome) -> Result<Candidate>;

    /// Files `(name, contents)` describing `genome` in this method's formats: ours and the
    /// original EvoPress's, written next to the results.
    fn config_files(&self, genome: &Genome) -> Result<Vec<(String, String)>>;

    /// Reads back the configuration [`config_files`](Self::config_files) wrote into `dir`, so
    /// final numbers come from what is on disk.
    fn read_config(&self, dir: &Path) -> Result<Genome>;

    /// The method's own result fields for `genome` (counted zeros, stored bits, ...).
    fn report(&self, genome: &Genome, candidate: &Candidate) -> Result<Report>;

    /// The one-shot baselines this method offers, cheapest first.
    fn baselines(&self) -> Vec<BaselineInfo>;

    /// Runs the baseline called `name` (one of [`baselines`](Self::baselines)).
    fn baseline(&self, name: &str, ctx: &BaselineContext) -> Result<Baseline>;
}

/// A baseline as a method lists it.
#[derive(Clone, Debug)]
pub struct BaselineInfo {
    pub name: String,
    pub about: &'static str,
    /// Cheap enough to run in every search (seconds, not a search's worth of evaluations):
    /// these seed the search and are scored on the held-out text next to its result.
    pub cheap: bool,
}

/// What a baseline needs: the model, a device, the search's calibration data and the tokens
/// of it that baselines score on.
pub struct BaselineContext<'a> {
    pub model: &'a Model,
    pub dev: &'a dyn Device,
    pub cal: &'a Calibration,
    pub batch: &'a TokenBatch,
    /// `(done, total)` for a progress bar.
    pub progress: &'a dyn Fn(usize, usize),
}

/// A baseline's choice.
pub struct Baseline {
    pub name: String,
    /// The model it chose (for held-out evaluation).
    pub candidate: Candidate,
    /// The same choice as a genome of the backend's space, when it is one: then it seeds the
    /// search and enters its final tournament.
    pub genome: Option<Genome>,
    /// What the baseline measured on the way (scores, the grid point it picked).
    pub detail: toml::Table,
}

/// A method's measurements of a compressed model: fields for `result.toml` / `--json`, and
/// lines for a person.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub fields: toml::Table,
    pub summary: Vec<String>,
}

impl Report {
    pub fn merge(&mut self, other: Report) {
        self.fields.extend(other.fields);
        self.summary.extend(other.summary);
    }
}

/// A compressed model as the forward pass runs it: the weights (the dense model's, with some
/// linears swapped for views into a variant store) and which sub-blocks run. Cloning a
/// [`Model`] shares every weight's storage, so a candidate costs no copy of the model.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub model: Model,
    pub plan: Vec<BlockPlan>,
}

impl Candidate {
    /// The model as it is, every sub-block running.
    pub fn dense(model: &Model) -> Self {
        Candidate {
            plan: vec![BlockPlan::FULL; model.layers.len()],
            model: model.clone(),
        }
    }
}

/// Reads a method's config section into its parameter struct (which should deny unknown
/// fields); errors say which section and key.
pub fn parse_section<T: DeserializeOwned>(section: &toml::Table, what: &str) -> Result<T> {
    T::deserialize(toml::Value::Table(section.clone()))
        .map_err(|e| Error::Invalid(format!("{what}: {}", e.to_string().trim_end())))
}

/// Looks a method up by its backend kind among `methods`; the error lists the known kinds.
pub fn find_method<'m>(methods: &[&'m dyn Method], kind: &str) -> Result<&'m dyn Method> {
    methods
        .iter()
        .copied()
        .find(|m| m.name() == kind)
        .ok_or_else(|| {
            let known: Vec<&str> = methods.iter().map(|m| m.name()).collect();
            Error::Invalid(format!(
                "unknown backend kind `{kind}`; this build knows {}",
                known.join(", ")
            ))
        })
}

/// The method that builds `[database] kind = kind`; the error lists the known kinds.
pub fn find_database_method<'m>(methods: &[&'m dyn Method], kind: &str) -> Result<&'m dyn Method> {
    (methods.iter().copied())
        .find(|m| m.database_kinds().contains(&kind))
        .ok_or_else(|| {
            let known: Vec<&str> = (methods.iter())
                .flat_map(|m| m.database_kinds().iter().copied())
                .collect();
            Error::Invalid(format!(
                "unknown database kind `{kind}`; this build knows {}",
                known.join(", ")
            ))
        })
}
