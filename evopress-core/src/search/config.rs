//! The search's hyper-parameters (docs/search.md), as read from the `[search]` table of a config
//! file.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// One step of multi-step selection: score every candidate on `tokens` fresh tokens, keep the
/// best `survivors`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    pub survivors: usize,
    pub tokens: usize,
}

impl Stage {
    /// Stages from the original's two parallel lists (`--survivors_per_selection`,
    /// `--tokens_per_selection`).
    pub fn zip(survivors: &[usize], tokens: &[usize]) -> Result<Vec<Stage>> {
        if survivors.len() != tokens.len() {
            return Err(invalid(format!(
                "{} survivor counts but {} token counts: one of each per stage",
                survivors.len(),
                tokens.len()
            )));
        }
        let stages = survivors.iter().zip(tokens);
        Ok(stages
            .map(|(&survivors, &tokens)| Stage { survivors, tokens })
            .collect())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchConfig {
    pub generations: usize,
    /// λ: distinct offspring per generation.
    pub offspring: usize,
    /// Parents kept per generation (the last stage's survivors).
    #[serde(default = "default_population_size")]
    pub population_size: usize,
    /// M: at most this many level switches per mutation.
    #[serde(default = "default_max_mutations")]
    pub max_mutations: usize,
    pub stages: Vec<Stage>,
    /// Random starts scored to pick the first parent(s), where the start is random.
    #[serde(default)]
    pub initially_generated: usize,
    /// Tokens the random starts are scored on.
    #[serde(default)]
    pub initial_tokens: usize,
    #[serde(default)]
    pub seed: u64,
    /// Search for the worst genome instead (the fitness is multiplied by −1).
    #[serde(default)]
    pub invert_fitness: bool,
    /// Mutations tried per generation before giving up on finding `offspring` distinct ones.
    #[serde(default = "default_max_offspring_attempts")]
    pub max_offspring_attempts: usize,
}

fn default_population_size() -> usize {
    1
}

fn default_max_mutations() -> usize {
    3
}

fn default_max_offspring_attempts() -> usize {
    10_000
}

fn invalid(msg: String) -> Error {
    Error::Invalid(format!("search config: {msg}"))
}

impl SearchConfig {
    fn with_stages(generations: usize, offspring: usize, stages: &[(usize, usize)]) -> Self {
        SearchConfig {
            generations,
            offspring,
            population_size: default_population_size(),
            max_mutations: default_max_mutations(),
            stages: (stages.iter())
                .map(|&(survivors, tokens)| Stage { survivors, tokens })
                .collect(),
            initially_generated: 0,
            initial_tokens: 0,
            seed: 0,
            invert_fitness: false,
            max_offspring_attempts: default_max_offspring_attempts(),
        }
    }

    /// The scripts' depth-pruning settings: `k(n−k)/1.5` generations, best of 64 random starts.
    pub fn depth_defaults(n_blocks: usize, k: usize) -> Self {
        let generations = (k * n_blocks.saturating_sub(k)) as f64 / 1.5;
        SearchConfig {
            initially_generated: 64,
            initial_tokens: 2048,
            ..Self::with_stages(generations as usize, 32, &[(2, 2048), (1, 32768)])
        }
    }

    /// The scripts' unstructured-sparsity settings (the start is uniform).
    pub fn sparsity_defaults() -> Self {
        Self::with_stages(400, 64, &[(8, 2048), (2, 16384), (1, 65536)])
    }

    /// The scripts' quantization settings; a non-integer target starts from the best of 32
    /// random starts (the paper's "Best of 32").
    pub fn quantization_defaults() -> Self {
        SearchConfig {
            initially_generated: 32,
            initial_tokens: 2048,
            ..Self::with_stages(150, 128, &[(16, 2048), (4, 16384), (1, 131072)])
        }
    }

    /// The paper's "super-fast" setting.
    pub fn super_fast_defaults() -> Self {
        Self::with_stages(400, 16, &[(1, 512), (1, 8192)])
    }

    /// The checks that need nothing but the config itself.
    pub fn validate(&self) -> Result<()> {
        let at_least_one = [
            ("offspring", self.offspring),
            ("population_size", self.population_size),
            ("max_mutations", self.max_mutations),
        ];
        for (key, value) in at_least_one {
            if value == 0 {
                return Err(invalid(format!("`{key}` must be at least 1")));
            }
        }
        let Some(last) = self.stages.last() else {
            return Err(invalid("`stages` is empty".into()));
        };
        if last.survivors != self.population_size {
            return Err(invalid(format!(
                "the last stage keeps {} survivors, but `population_size` is {}",
                last.survivors, self.population_size
            )));
        }
        let mut candidates = self.offspring;
        for (i, stage) in self.stages.iter().enumerate() {
            if stage.survivors == last.survivors {
                candidates += self.population_size;
            }
            if stage.tokens == 0 || stage.survivors == 0 {
                return Err(invalid(format!(
                    "`stages[{i}]` must keep at least 1 survivor and score on at least 1 token"
                )));
            }
            if stage.survivors > candidates {
                return Err(invalid(format!(
                    "`stages[{i}]` keeps {} survivors of only {candidates} candidates",
                    stage.survivors
                )));
            }
            candidates = stage.survivors;
        }
        if self.max_offspring_attempts < self.offspring {
            return Err(invalid(format!(
                "`max_offspring_attempts` ({}) is below `offspring` ({})",
                self.max_offspring_attempts, self.offspring
            )));
        }
        Ok(())
    }
}
