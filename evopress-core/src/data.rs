//! Text files to token windows, and perplexity over them.
//!
//! The protocol is the original EvoPress's (docs/perplexity-protocol.md): tokenize
//! each file whole with no BOS and no special tokens, cut non-overlapping windows of `L` tokens
//! from the start (the tail is dropped), score every token but the first of each window, and
//! report `exp` of the mean natural-log NLL over all scored tokens.

use crate::error::{Error, Result};
use crate::model::{BlockPlan, Model};
use crate::tokenizer::Tokenizer;
use evopress_kernels::Device;
use std::path::{Path, PathBuf};

/// A tokenized text file.
#[derive(Clone, Debug)]
pub struct TokenizedFile {
    pub path: PathBuf,
    pub tokens: Vec<u32>,
}

impl TokenizedFile {
    pub fn read(path: &Path, tokenizer: &Tokenizer) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Ok(TokenizedFile {
            path: path.into(),
            tokens: tokenizer.encode(&text)?,
        })
    }
}

/// The first `limit` (or all) non-overlapping windows of `seq_len` tokens over `files`, taken
/// file by file in order. A file too short for one window is an error naming it, as is asking
/// for more windows than the files hold.
pub fn windows(
    files: &[TokenizedFile],
    seq_len: usize,
    limit: Option<usize>,
) -> Result<Vec<&[u32]>> {
    if seq_len < 2 {
        return Err(Error::Invalid(format!(
            "sequence length {seq_len} is too short: at least 2 tokens are needed to score one"
        )));
    }
    if limit == Some(0) {
        return Err(Error::Invalid(
            "0 evaluation windows asked for: at least 1 is needed to score a perplexity".into(),
        ));
    }
    let mut out = Vec::new();
    for f in files {
        if f.tokens.len() < seq_len {
            return Err(Error::Invalid(format!(
                "{}: the text has {} tokens, shorter than one window of {seq_len}",
                f.path.display(),
                f.tokens.len()
            )));
        }
        out.extend(f.tokens.chunks_exact(seq_len));
    }
    if let Some(n) = limit {
        if n > out.len() {
            return Err(Error::Invalid(format!(
                "asked for {n} windows of {seq_len} tokens but the data holds only {}",
                out.len()
            )));
        }
        out.truncate(n);
    }
    Ok(out)
}

/// Sum of negative log-likelihoods and the number of tokens they cover.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NllSum {
    pub nll: f64,
    pub tokens: usize,
}

impl NllSum {
    pub fn add(&mut self, other: NllSum) {
        self.nll += other.nll;
        self.tokens += other.tokens;
    }
    pub fn perplexity(&self) -> f64 {
        (self.nll / self.tokens as f64).exp()
    }
}

/// NLL of `window[1..]` given its prefixes, with sub-blocks run according to `plan`.
pub fn window_nll<D: Device + ?Sized>(
    model: &Model,
    dev: &D,
    window: &[u32],
    plan: &[BlockPlan],
) -> Result<NllSum> {
    let hidden = model.hidden_states(dev, window, 1, plan)?;
    let vocab = model.vocab_size();
    let scored = window.len() - 1;
    let nll = model.sum_over_logits(dev, &hidden, scored, |start, logits| {
        let next = &window[start + 1..start + 1 + logits.len() / vocab];
        evopress_kernels::cpu::reduce::log_softmax_nll(logits, vocab, next)
    });
    if !nll.is_finite() {
        return Err(Error::non_finite("the summed NLL of a window", nll));
    }
    Ok(NllSum {
        nll,
        tokens: scored,
    })
}

/// Perplexity over windows, calling `progress` after each one. The result's
/// [`NllSum::perplexity`] is finite: no window, or a NaN or infinite score, is an error.
pub fn perplexity<D: Device + ?Sized>(
    model: &Model,
    dev: &D,
    windows: &[&[u32]],
    plan: &[BlockPlan],
    mut progress: impl FnMut(usize),
) -> Result<NllSum> {
    if windows.is_empty() {
        return Err(Error::Invalid(
            "no evaluation windows: a perplexity needs at least one".into(),
        ));
    }
    let mut total = NllSum::default();
    for (i, w) in windows.iter().enumerate() {
        let nll = window_nll(model, dev, w, plan)
            .map_err(|e| Error::Invalid(format!("evaluation window {i}: {e}")))?;
        total.add(nll);
        progress(i + 1);
    }
    let ppl = total.perplexity();
    if !ppl.is_finite() {
        return Err(Error::non_finite("the perplexity", ppl));
    }
    Ok(total)
}

/// How calibration windows are cut from the files' token streams (laid end to end in file
/// order). Neither adds a BOS token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampling {
    /// Non-overlapping windows from the start.
    Sequential,
    /// Windows at uniformly random offsets (seeded; they may overlap), like the original's
    /// WikiText-2 calibration.
    Random,
}

/// `count` calibration windows of `seq_len` tokens.
pub fn calibration_windows(
    files: &[TokenizedFile],
    seq_len: usize,
    count: usize,
    sampling: Sampling,
    seed: u64,
) -> Result<Vec<Vec<u32>>> {
    use rand::{Rng, SeedableRng};
    let stream: Vec<u32> = files
        .iter()
        .flat_map(|f| f.tokens.iter().copied())
        .collect();
    let too_few = || {
        Error::Invalid(format!(
            "the calibration files hold {} tokens, too few for {count} windows of {seq_len}",
            stream.len()
        ))
    };
    if seq_len < 2 || stream.len() < seq_len {
        return Err(too_few());
    }
    match sampling {
        Sampling::Sequential => {
            if stream.len() / seq_len < count {
                return Err(too_few());
            }
            Ok(stream
                .chunks_exact(seq_len)
                .take(count)
                .map(<[u32]>::to_vec)
                .collect())
        }
        Sampling::Random => {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            Ok((0..count)
                .map(|_| {
                    let at = rng.gen_range(0..=stream.len() - seq_len);
                    stream[at..at + seq_len].to_vec()
                })
                .collect())
        }
    }
}
