//! Up-front checks, so that a setup that could not run to the end fails before any work
//! rather than erring (or, in the original, spinning) generations later.

use super::config::{InitialSource, SearchConfig};
use super::init;
use super::space::SearchSpace;
use crate::error::{Error, Result};

pub(super) fn check(
    space: &SearchSpace,
    config: &SearchConfig,
    sample_lens: &[usize],
) -> Result<()> {
    config.validate()?;
    enough_genomes(space, config)?;
    let random_start =
        init::start_count(space) != Some(1) && config.initial.contains(&InitialSource::Random);
    if random_start {
        enough_random_starts(space, config)?;
    }
    let available: usize = sample_lens.iter().sum();
    let stage_tokens = config.stages.iter().map(|s| s.tokens);
    let initial_tokens = Some(config.initial_tokens);
    if let Some(tokens) = stage_tokens.chain(initial_tokens).find(|&t| t > available) {
        return Err(invalid(format!(
            "a stage asks for {tokens} tokens, but the {} calibration samples hold {available}",
            sample_lens.len()
        )));
    }
    Ok(())
}

fn invalid(msg: String) -> Error {
    Error::Invalid(format!("search: {msg}"))
}

/// Offspring must differ from each other and from the parents.
fn enough_genomes(space: &SearchSpace, config: &SearchConfig) -> Result<()> {
    let needed = (config.offspring + config.population_size) as u128;
    match space.legal_genome_count() {
        Some(count) if count < needed => Err(invalid(format!(
            "the search space ({}) is too small for offspring={} distinct offspring besides \
             population_size={} parents",
            space.describe(),
            config.offspring,
            config.population_size
        ))),
        _ => Ok(()),
    }
}

fn enough_random_starts(space: &SearchSpace, config: &SearchConfig) -> Result<()> {
    if config.initially_generated < config.population_size {
        return Err(invalid(format!(
            "the start is random, so `initially_generated` ({}) must be at least \
             `population_size` ({})",
            config.initially_generated, config.population_size
        )));
    }
    match init::start_count(space) {
        Some(starts) if starts < config.initially_generated as u128 => Err(invalid(format!(
            "only {starts} distinct random starts exist, fewer than `initially_generated` = {}",
            config.initially_generated
        ))),
        _ => Ok(()),
    }
}
