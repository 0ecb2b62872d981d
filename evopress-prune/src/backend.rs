//! Depth pruning as a [`CompressionBackend`]: k attention and k MLP sub-blocks dropped (or k
//! whole blocks), optionally only where a legality mask allows.

use crate::{drop_config, DepthEvaluator};
use evopress_core::evaluate::Calibration;
use evopress_core::search::{DepthLayout, DropMask, Evaluator, Genome, SearchSpace};
use evopress_core::{Candidate, CompressionBackend, Model, Result};
use evopress_kernels::Device;
use std::path::Path;

/// The original format's file name, rewritten every generation as the original does.
pub const ORIGINAL_CONFIG: &str = "layer_drop_config.txt";
pub const TOML_CONFIG: &str = "drop_config.toml";

pub struct DepthBackend {
    pub k: usize,
    pub drop_entire_block: bool,
    /// Which sub-blocks may be dropped; `None` allows all.
    pub legal: Option<DropMask>,
}

impl DepthBackend {
    pub fn layout(&self, model: &Model) -> DepthLayout {
        DepthLayout {
            n_blocks: model.layers.len(),
            entire_block: self.drop_entire_block,
        }
    }
}

impl<D: Device> CompressionBackend<D> for DepthBackend {
    fn name(&self) -> &'static str {
        "depth"
    }

    fn search_space(&self, model: &Model) -> Result<SearchSpace> {
        self.layout(model).space(self.k, self.legal.as_ref())
    }

    fn evaluator<'a>(
        &'a self,
        model: &'a Model,
        dev: &'a D,
        cal: &'a Calibration,
        cache_cap_bytes: usize,
    ) -> Box<dyn Evaluator + 'a> {
        Box::new(DepthEvaluator::new(
            model,
            dev,
            cal,
            self.layout(model),
            cache_cap_bytes,
        ))
    }

    fn config_files(&self, model: &Model, genome: &Genome) -> Vec<(String, String)> {
        let mask = self.layout(model).drops(genome);
        vec![
            (ORIGINAL_CONFIG.into(), drop_config::to_original(&mask)),
            (TOML_CONFIG.into(), drop_config::to_toml(&mask)),
        ]
    }

    fn load_candidate(&self, model: &Model, dir: &Path) -> Result<Candidate> {
        let mask = drop_config::read(&dir.join(ORIGINAL_CONFIG), model.layers.len())?;
        Ok(Candidate {
            model: model.clone(),
            plan: drop_config::plan(&mask),
        })
    }
}
