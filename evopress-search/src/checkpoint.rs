//! Checkpoints: the whole [`SearchState`] as JSON, written atomically after every generation,
//! so that a killed run resumes and ends exactly where an uninterrupted one would.

use super::config::SearchConfig;
use super::evolve::{GenerationRecord, Search, SearchState, Seed};
use super::mutation::MoveCredit;
use super::space::{Genome, SearchSpace};
use crate::error::{Error, Result};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::Path;

const FORMAT: u32 = 2;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Checkpoint {
    format: u32,
    /// Hex of [`fingerprint`]: what the run was started with.
    fingerprint: String,
    generation: usize,
    population: Vec<Genome>,
    history: Vec<GenerationRecord>,
    seeds: Vec<Seed>,
    recent_parents: Vec<Genome>,
    unchanged: usize,
    /// Absent from checkpoints written before adaptive move choice: no evidence yet.
    #[serde(default)]
    moves: MoveCredit,
    rng: RngState,
}

/// ChaCha's position: enough to rebuild the generator exactly.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RngState {
    seed: [u8; 32],
    stream: u64,
    word_pos: u128,
}

impl RngState {
    fn of(rng: &ChaCha8Rng) -> Self {
        RngState {
            seed: rng.get_seed(),
            stream: rng.get_stream(),
            word_pos: rng.get_word_pos(),
        }
    }

    fn restore(&self) -> ChaCha8Rng {
        use rand::SeedableRng;
        let mut rng = ChaCha8Rng::from_seed(self.seed);
        rng.set_stream(self.stream);
        rng.set_word_pos(self.word_pos);
        rng
    }
}

/// FNV-1a over the JSON of everything that decides a run's trajectory. `generations` is left
/// out, so a finished run can be resumed with more generations.
pub(super) fn fingerprint(
    space: &SearchSpace,
    config: &SearchConfig,
    sample_lens: &[usize],
    identity: &str,
) -> u64 {
    let config = SearchConfig {
        generations: 0,
        ..config.clone()
    };
    let json = serde_json::to_vec(&(space, config, sample_lens, identity))
        .expect("search spaces and configs serialize");
    json.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Search<'_> {
    /// The whole of `state` as JSON: what a caller writes atomically after every generation so
    /// that a killed run resumes exactly where it stopped.
    pub fn checkpoint_json(&self, state: &SearchState) -> Vec<u8> {
        let checkpoint = Checkpoint {
            format: FORMAT,
            fingerprint: format!("{:016x}", self.fingerprint),
            generation: state.generation,
            population: state.population.clone(),
            history: state.history.clone(),
            seeds: state.seeds.clone(),
            recent_parents: state.recent_parents.clone(),
            unchanged: state.unchanged,
            moves: state.moves,
            rng: RngState::of(&state.rng),
        };
        serde_json::to_vec_pretty(&checkpoint).expect("checkpoints serialize")
    }

    /// Reads a checkpoint file written by a search with the same space, config (up to
    /// `generations`), calibration data and identity; refuses any other.
    pub fn resume(&self, path: &Path) -> Result<SearchState> {
        let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        self.resume_json(path, &text)
    }

    /// [`resume`](Self::resume) from the text of a checkpoint; `path` names it in errors.
    pub fn resume_json(&self, path: &Path, text: &str) -> Result<SearchState> {
        let checkpoint: Checkpoint = serde_json::from_str(text)
            .map_err(|e| Error::format(path, format!("not a search checkpoint: {e}")))?;
        if checkpoint.format != FORMAT {
            return Err(Error::format(
                path,
                format!(
                    "checkpoint format {} (this build reads {FORMAT})",
                    checkpoint.format
                ),
            ));
        }
        let expected = format!("{:016x}", self.fingerprint);
        if checkpoint.fingerprint != expected {
            return Err(Error::format(
                path,
                format!(
                    "the checkpoint was written by a search with a different search space, \
                     config, calibration data or model (fingerprint {} != {expected}); \
                     delete it to start afresh",
                    checkpoint.fingerprint
                ),
            ));
        }
        if checkpoint.population.is_empty() {
            return Err(Error::format(path, "the checkpoint holds no population"));
        }
        for genome in &checkpoint.population {
            self.space
                .check_genome(genome)
                .map_err(|e| Error::format(path, e.to_string()))?;
        }
        Ok(SearchState {
            generation: checkpoint.generation,
            population: checkpoint.population,
            history: checkpoint.history,
            seeds: checkpoint.seeds,
            recent_parents: checkpoint.recent_parents,
            unchanged: checkpoint.unchanged,
            moves: checkpoint.moves,
            rng: checkpoint.rng.restore(),
        })
    }
}

/// Stores an `f64` as the string of its shortest round-trip decimal. serde_json's default
/// float parser may land one ulp off, which would break bit-identical resumed histories.
pub(super) mod exact_f64 {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{value:?}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse()
            .map_err(|e| D::Error::custom(format!("`{text}` is not a number: {e}")))
    }
}
