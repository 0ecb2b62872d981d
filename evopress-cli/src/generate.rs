//! `evopress generate`: greedy decoding with a KV cache, of the model or of a compressed
//! candidate of it (the same flags as `eval`).

use crate::configs::ConfigArgs;
use anyhow::{Context, Result};
use evopress_core::load_model;
use evopress_kernels::Device;
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
    let t0 = Instant::now();
    let ids = model.generate(dev, &prompt, a.max_tokens, model.config.eos_token_id, plan)?;
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
