//! `evopress generate`: decoding with a KV cache (greedy, or sampled at a temperature), of
//! the model or of a compressed candidate of it (the same flags as `eval`).

use crate::configs::ConfigArgs;
use anyhow::{Context, Result};
use evopress_core::self_text::sample;
use evopress_core::{load_model, Error};
use evopress_kernels::Device;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// A `.gguf` file or an HF directory.
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
    /// Sample each token from the softmax at this temperature (0: greedy, the default).
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Seed of the sampling (with --temperature above 0).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print the new token ids and timing as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    configs: ConfigArgs,
}

pub fn run(a: Args, dev: &dyn Device) -> Result<()> {
    let loaded = load_model(&a.model).with_context(|| format!("loading {}", a.model.display()))?;
    let tok = loaded.tokenizer()?;
    let (candidate, _) = a.configs.configs().apply(&loaded.model)?;
    let (model, plan) = (&candidate.model, &candidate.plan);
    let prompt = tok.encode(&a.prompt)?;
    let context = model.config.max_position_embeddings;
    anyhow::ensure!(!prompt.is_empty(), "the prompt encodes to no tokens");
    anyhow::ensure!(
        prompt.len() + a.max_tokens <= context,
        "the prompt's {} tokens plus --max-tokens {} exceed the model's context of {context} \
         positions; lower --max-tokens to at most {}",
        prompt.len(),
        a.max_tokens,
        context.saturating_sub(prompt.len())
    );
    anyhow::ensure!(
        a.temperature >= 0.0 && a.temperature.is_finite(),
        "--temperature {} must be a finite number >= 0",
        a.temperature
    );
    let mut rng = ChaCha8Rng::seed_from_u64(a.seed);
    let pick = |logits: &[f32]| {
        sample(logits, a.temperature, &mut rng)
            .map(|i| i as u32)
            .ok_or_else(|| Error::non_finite("the next token's logits", f64::NAN))
    };
    let t0 = Instant::now();
    let stop = model.config.eos_token_id;
    let ids = model.generate_with(dev, &prompt, a.max_tokens, stop, plan, pick)?;
    let seconds = t0.elapsed().as_secs_f64();
    let text = tok.decode(&ids)?;
    if a.json {
        let out = serde_json::json!({
            "prompt_ids": prompt,
            "new_ids": ids,
            "new_text": text,
            "seconds": seconds,
            "tokens_per_second": ids.len() as f64 / seconds,
        });
        println!("{out}");
    } else {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{}{}", a.prompt, text)?;
        eprintln!(
            "{} tokens in {:.2}s ({:.1} tokens/s)",
            ids.len(),
            seconds,
            ids.len() as f64 / seconds
        );
    }
    Ok(())
}
