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
    /// Where the first parents come from: the backend's cheap baselines as seeds, random starts,
    /// or both (the default). The best `population_size` on `initial_tokens` tokens start.
    #[serde(default = "default_initial")]
    pub initial: Vec<InitialSource>,
    /// Drop a candidate as soon as its partial fitness already exceeds the totals of the
    /// stage's survivors. Exact for non-negative fitness (KL, NLL): the survivors are the same
    /// as with full scoring, only cheaper.
    #[serde(default = "default_true")]
    pub racing: bool,
    /// After the last generation, the winner, the last `final_parents` distinct parents and
    /// every seed are scored on `final_tokens` tokens (0: all calibration tokens) and the best
    /// is returned, so noise in the stages cannot return something worse than a seed.
    #[serde(default = "default_true")]
    pub final_tournament: bool,
    #[serde(default)]
    pub final_tokens: usize,
    #[serde(default = "default_final_parents")]
    pub final_parents: usize,
    /// Wall-clock budget for the whole run, e.g. `"20m"`, `"90s"`, `"1h"`: generations stop
    /// when the next one (and the work after the last) would not fit. `generations` stays an
    /// upper bound.
    #[serde(default, with = "duration_text")]
    pub time_budget: Option<f64>,
    /// Stop early once the best parent has survived this many generations in a row.
    #[serde(default)]
    pub patience: Option<usize>,
}

/// A source of initial genomes (`[search] initial`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitialSource {
    /// The backend's cheap one-shot baselines, each as a seed genome.
    Baselines,
    /// `initially_generated` random legal genomes.
    Random,
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

fn default_initial() -> Vec<InitialSource> {
    vec![InitialSource::Baselines, InitialSource::Random]
}

fn default_true() -> bool {
    true
}

fn default_final_parents() -> usize {
    4
}

/// `"20m"`-style durations as seconds.
mod duration_text {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => s.serialize_str(&format!("{v}s")),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text)
            .map(Some)
            .map_err(D::Error::custom)
    }
}

/// Seconds in `"90s"`, `"20m"`, `"1.5h"` (a bare number is seconds).
pub fn parse_duration(text: &str) -> std::result::Result<f64, String> {
    let t = text.trim();
    let (number, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let scale = match unit.trim() {
        "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "time_budget `{text}`: unknown unit `{other}` (use s, m or h, e.g. \"20m\")"
            ))
        }
    };
    match number.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v * scale),
        _ => Err(format!(
            "time_budget `{text}` is not a positive duration (e.g. \"20m\", \"90s\", \"1h\")"
        )),
    }
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
            initial: default_initial(),
            racing: true,
            final_tournament: true,
            final_tokens: 0,
            final_parents: default_final_parents(),
            time_budget: None,
            patience: None,
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
            ("generations", self.generations),
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
        if self.initial.is_empty() {
            return Err(invalid(
                "`initial` is empty: use \"baselines\", \"random\" or both".into(),
            ));
        }
        if self.patience == Some(0) {
            return Err(invalid("`patience` must be at least 1".into()));
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
