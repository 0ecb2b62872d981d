//! The seam between the search and a compression method. A new method (a crate) implements
//! [`CompressionBackend`] and is registered in one place in the CLI; the search itself only
//! sees its [`SearchSpace`] and [`Evaluator`].

use crate::error::Result;
use crate::evaluate::Calibration;
use crate::model::{BlockPlan, Model};
use crate::search::{Evaluator, Genome, SearchSpace};
use evopress_kernels::Device;
use std::path::Path;

pub trait CompressionBackend<D: Device> {
    /// Short name, used in result files.
    fn name(&self) -> &'static str;

    /// Units, ordered levels with costs, budget groups and legality for this model.
    fn search_space(&self, model: &Model) -> Result<SearchSpace>;

    /// The fitness of genomes on calibration tokens against the dense targets. Evaluators
    /// may cache the stage parent's activations up to `cache_cap_bytes`.
    fn evaluator<'a>(
        &'a self,
        model: &'a Model,
        dev: &'a D,
        cal: &'a Calibration,
        cache_cap_bytes: usize,
    ) -> Box<dyn Evaluator + 'a>;

    /// Files (name, contents) describing `genome` in this backend's formats: ours and the
    /// original EvoPress's, written next to the results.
    fn config_files(&self, model: &Model, genome: &Genome) -> Vec<(String, String)>;

    /// Reads back the configuration written by [`config_files`](Self::config_files) in `dir`
    /// as a runnable candidate, so final numbers come from what is on disk.
    fn load_candidate(&self, model: &Model, dir: &Path) -> Result<Candidate>;
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
