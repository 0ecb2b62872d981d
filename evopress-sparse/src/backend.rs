//! Unstructured sparsity as a [`CompressionBackend`] (docs/level-schemes.md, docs/search.md): one
//! unit per linear layer, its levels the database's, `Σ level = 0` held by the level-switch
//! mutation, and candidates assembled by swapping views into the memory-mapped store.

use crate::builder::{load_masked, OWL_BACKEND, SPARSEGPT_BACKEND};
use evopress_core::error::{Error, Result};
use evopress_core::evaluate::{Calibration, SwapEvaluator};
use evopress_core::level_config;
use evopress_core::search::{Evaluator, Genome, Level, SearchSpace};
use evopress_core::store::{Manifest, UnitEntry};
use evopress_core::variants::VariantTable;
use evopress_core::{BlockPlan, Candidate, CompressionBackend, Model};
use evopress_kernels::Device;
use std::path::Path;

/// The original format (`name: level`, names sorted as `sorted(os.listdir())` sorts them).
pub const ORIGINAL_CONFIG: &str = "sparse_config.txt";
pub const TOML_CONFIG: &str = "sparse_config.toml";

/// Zeros of a stored level (from the manifest; counted at build time on the stored weights).
pub fn level_zeros(entry: &UnitEntry, id: i32) -> Result<u64> {
    entry
        .level(id)
        .and_then(|l| l.extra.get("zeros"))
        .and_then(|z| z.as_u64())
        .ok_or_else(|| {
            Error::Invalid(format!(
                "the database records no zero count for `{}` level {id}",
                entry.name
            ))
        })
}

pub struct SparseBackend {
    pub table: VariantTable,
}

impl SparseBackend {
    /// Opens a SparseGPT or OWL database (checksums verified) for `model`.
    pub fn open(model: &Model, dir: &Path) -> Result<Self> {
        let backend = Manifest::read(dir)?.header.backend;
        if backend != SPARSEGPT_BACKEND && backend != OWL_BACKEND {
            return Err(Error::Invalid(format!(
                "{}: a `{backend}` database, not a sparsity one ({SPARSEGPT_BACKEND} or \
                 {OWL_BACKEND})",
                dir.display()
            )));
        }
        let table = VariantTable::open(model, dir, &backend, &load_masked)?;
        Ok(SparseBackend { table })
    }

    pub fn unit_names(&self) -> Vec<&str> {
        self.table.units().iter().map(|u| u.name.as_str()).collect()
    }

    /// Units in genome order, levels = the stored ids with cost = their zeros.
    pub fn space(&self) -> Result<SearchSpace> {
        let units = (0..self.table.units().len())
            .map(|u| {
                let entry = self.table.entry(u);
                let levels = (self.table.level_ids(u).iter())
                    .map(|&id| Ok(Level::new(id, level_zeros(entry, id)?)))
                    .collect::<Result<Vec<_>>>()?;
                Ok((entry.name.clone(), levels))
            })
            .collect::<Result<Vec<_>>>()?;
        SearchSpace::sparsity(units)
    }

    /// Level ids (one per unit, genome order) of a genome.
    pub fn ids(&self, genome: &Genome) -> Vec<i32> {
        (genome.0.iter().enumerate())
            .map(|(u, &l)| self.table.level_ids(u)[l as usize])
            .collect()
    }

    /// Every unit at level id `id` (uniform sparsity, or one OWL grid point).
    pub fn uniform(&self, id: i32) -> Result<Genome> {
        Ok(Genome(
            self.table.indices(&vec![id; self.table.units().len()])?,
        ))
    }

    /// The model with the genome's variants swapped in.
    pub fn candidate(&self, model: &Model, genome: &Genome) -> Result<Candidate> {
        Ok(Candidate {
            model: self.table.assemble(model, &genome.0)?,
            plan: vec![BlockPlan::FULL; model.layers.len()],
        })
    }

    /// `(name, level)` pairs sorted lexicographically by name, as the original writes them.
    fn sorted_pairs(&self, genome: &Genome) -> Vec<(&str, i32)> {
        let mut pairs: Vec<(&str, i32)> = self
            .unit_names()
            .into_iter()
            .zip(self.ids(genome))
            .collect();
        pairs.sort_by(|a, b| a.0.cmp(b.0));
        pairs
    }

    /// The original format's text and our TOML of a genome.
    pub fn config_texts(&self, genome: &Genome) -> Vec<(String, String)> {
        let pairs = self.sorted_pairs(genome);
        vec![
            (
                ORIGINAL_CONFIG.into(),
                level_config::to_original(pairs.iter().copied()),
            ),
            (
                TOML_CONFIG.into(),
                level_config::to_toml(pairs.iter().copied()),
            ),
        ]
    }

    /// Reads a level file (original format or `.toml`) as a genome of this database.
    pub fn read_config(&self, path: &Path) -> Result<Genome> {
        let ids = level_config::read(path, &self.unit_names())?;
        Ok(Genome(self.table.indices(&ids)?))
    }
}

impl<D: Device> CompressionBackend<D> for SparseBackend {
    fn name(&self) -> &'static str {
        "sparse"
    }

    fn search_space(&self, _model: &Model) -> Result<SearchSpace> {
        self.space()
    }

    fn evaluator<'a>(
        &'a self,
        model: &'a Model,
        dev: &'a D,
        cal: &'a Calibration,
        cache_cap_bytes: usize,
    ) -> Box<dyn Evaluator + 'a> {
        let unit_block = self.table.units().iter().map(|u| u.block).collect();
        let assemble = Box::new(move |g: &Genome| self.table.assemble(model, &g.0));
        Box::new(SwapEvaluator::new(
            model,
            dev,
            cal,
            unit_block,
            assemble,
            cache_cap_bytes,
        ))
    }

    fn config_files(&self, _model: &Model, genome: &Genome) -> Vec<(String, String)> {
        self.config_texts(genome)
    }

    fn load_candidate(&self, model: &Model, dir: &Path) -> Result<Candidate> {
        let genome = self.read_config(&dir.join(ORIGINAL_CONFIG))?;
        self.candidate(model, &genome)
    }
}
