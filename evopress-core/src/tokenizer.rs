//! Text to token ids and back, through HF's `tokenizers` crate: loaded from an HF
//! `tokenizer.json`, or rebuilt from a GGUF file's embedded vocabulary so that a GGUF model
//! needs no other file (and `convert` can write the `tokenizer.json` it lacks).

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::source::TensorSource;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

/// llama.cpp token types (`tokenizer.ggml.token_type`) that become added tokens.
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Llama-3's split regex (llama.cpp pre-tokenizer `llama-bpe`), as in its tokenizer.json.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split regex: Llama-3's with single digits.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Where it came from, for error messages.
    source: PathBuf,
}

impl std::fmt::Debug for Tokenizer {
    /// Source and size only: the full vocabulary would be tens of thousands of lines.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl Tokenizer {
    /// Loads an HF `tokenizer.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Tokenizer> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| Error::format(path, format!("not a valid tokenizer.json: {e}")))?;
        Ok(Tokenizer {
            inner,
            source: path.into(),
        })
    }

    /// Rebuilds the byte-level BPE tokenizer embedded in a GGUF file
    /// (`tokenizer.ggml.model = gpt2`), with the pre-tokenizer that `tokenizer.ggml.pre`
    /// names. Control tokens become special added tokens, user-defined ones plain added
    /// tokens, as in the HF original.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Tokenizer> {
        let path = gguf.path();
        let model = gguf.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(Error::Unsupported {
                path: path.into(),
                what: format!("tokenizer.ggml.model `{model}`"),
                hint: "only byte-level BPE (`gpt2`) vocabularies are rebuilt; use the model's \
                       tokenizer.json"
                    .into(),
            });
        }
        let pre = gguf.get_str("tokenizer.ggml.pre")?;
        let (normalizer, pre_tokenizer) =
            pre_tokenizer_for(pre).ok_or_else(|| Error::Unsupported {
                path: path.into(),
                what: format!("tokenizer.ggml.pre `{pre}`"),
                hint: "known: smollm, starcoder, refact, codeshell, gpt-2, phi-2, llama-bpe, \
                       qwen2; use the model's tokenizer.json"
                    .into(),
            })?;
        let tokens = gguf.get_str_array("tokenizer.ggml.tokens")?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab(&tokens, path)?, merges(gguf)?)
            .build()
            .map_err(|e| Error::format(path, format!("GGUF vocabulary is not a valid BPE: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner
            .with_normalizer(normalizer)
            .with_pre_tokenizer(Some(pre_tokenizer))
            .with_decoder(Some(ByteLevel::default()))
            .with_post_processor(Some(ByteLevel::default().trim_offsets(false)));
        let types = token_types(gguf, tokens.len())?;
        let added = |kind: i64, special: bool| -> Vec<AddedToken> {
            tokens
                .iter()
                .zip(&types)
                .filter(|(_, &t)| t == kind)
                .map(|(tok, _)| AddedToken::from(*tok, special).normalized(false))
                .collect()
        };
        inner.add_special_tokens(&added(TOKEN_TYPE_CONTROL, true));
        inner.add_tokens(&added(TOKEN_TYPE_USER_DEFINED, false));
        Ok(Tokenizer {
            inner,
            source: path.into(),
        })
    }

    fn err(&self, msg: impl Into<String>) -> Error {
        Error::format(&self.source, msg)
    }

    /// Token ids of `text`, with no BOS and no other special tokens added (special tokens
    /// written in the text are still recognised, as in HF).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| self.err(format!("tokenizer failed to encode: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The text of `ids`, special tokens included. Ids outside the vocabulary are an error
    /// (HF would silently drop them).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let n = self.vocab_size();
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= n) {
            return Err(Error::Invalid(format!(
                "token id {bad} is outside the vocabulary of {n} tokens ({})",
                self.source.display()
            )));
        }
        self.inner
            .decode(ids, false)
            .map_err(|e| self.err(format!("tokenizer failed to decode: {e}")))
    }

    /// Tokens including added ones.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The `tokenizer.json` text, readable by HF `tokenizers` from 0.19 on (see
    /// [`merges_as_strings`]).
    pub fn to_json(&self) -> Result<String> {
        let text = self
            .inner
            .to_string(false)
            .map_err(|e| self.err(format!("cannot serialize the tokenizer: {e}")))?;
        let mut v: serde_json::Value =
            serde_json::from_str(&text).expect("tokenizers writes valid JSON");
        merges_as_strings(&mut v);
        Ok(serde_json::to_string_pretty(&v).expect("a JSON value serializes"))
    }

    /// Writes [`to_json`](Self::to_json) to `path`, atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        crate::fsutil::write_atomically(path.as_ref(), self.to_json()?.as_bytes())
    }

    /// The added tokens (special and not), as `(id, content, special)`, by id.
    pub fn added_tokens(&self) -> Vec<(u32, String, bool)> {
        let mut v: Vec<(u32, String, bool)> = self
            .inner
            .get_added_tokens_decoder()
            .into_iter()
            .map(|(id, t)| (id, t.content, t.special))
            .collect();
        v.sort_unstable_by_key(|t| t.0);
        v
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }
}

/// Rewrites a parsed `tokenizer.json` so that HF `tokenizers` from 0.19 on reads it: BPE merges
/// become `"a b"` strings (the `tokenizers` crate writes `["a", "b"]` pairs since 0.20, which
/// older readers reject). A vocabulary whose merge parts contain a space keeps the pair form,
/// the only one that can hold it.
pub fn merges_as_strings(tokenizer_json: &mut serde_json::Value) {
    use serde_json::Value;
    let Some(merges) = tokenizer_json
        .pointer_mut("/model/merges")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    let joined: Option<Vec<Value>> = merges
        .iter()
        .map(|m| match m {
            Value::String(_) => Some(m.clone()),
            Value::Array(pair) => match pair.as_slice() {
                [Value::String(a), Value::String(b)] if !a.contains(' ') && !b.contains(' ') => {
                    Some(Value::String(format!("{a} {b}")))
                }
                _ => None,
            },
            _ => None,
        })
        .collect();
    if let Some(joined) = joined {
        *merges = joined;
    }
}

/// The HF normalizer and pre-tokenizer matching a llama.cpp pre-tokenizer name.
fn pre_tokenizer_for(pre: &str) -> Option<(Option<NormalizerWrapper>, PreTokenizerWrapper)> {
    let byte_level = |trim_offsets: bool, use_regex: bool| {
        PreTokenizerWrapper::from(ByteLevel::new(false, trim_offsets, use_regex))
    };
    let split = |re: &str| {
        let split = Split::new(
            SplitPattern::Regex(re.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .expect("built-in regex compiles");
        PreTokenizerWrapper::from(split)
    };
    let seq = |parts: Vec<PreTokenizerWrapper>| PreTokenizerWrapper::from(Sequence::new(parts));
    Some(match pre {
        // Single digits, then GPT-2's regex (llama.cpp groups these four).
        "smollm" | "starcoder" | "refact" | "codeshell" => (
            None,
            seq(vec![Digits::new(true).into(), byte_level(true, true)]),
        ),
        "gpt-2" | "phi-2" => (None, byte_level(true, true)),
        "llama-bpe" => (
            None,
            seq(vec![split(LLAMA3_SPLIT), byte_level(true, false)]),
        ),
        "qwen2" => (
            Some(NFC.into()),
            seq(vec![split(QWEN2_SPLIT), byte_level(false, false)]),
        ),
        _ => return None,
    })
}

/// Token string to id. Duplicate strings cannot be represented by a BPE vocabulary, so they
/// are an error rather than a silently unreachable id.
fn vocab(tokens: &[&str], path: &Path) -> Result<Vocab> {
    let mut first_id: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    for (id, tok) in tokens.iter().enumerate() {
        if let Some(prev) = first_id.insert(tok, id) {
            return Err(Error::format(
                path,
                format!("tokenizer.ggml.tokens: token {tok:?} appears twice (ids {prev} and {id})"),
            ));
        }
    }
    Ok(tokens
        .iter()
        .enumerate()
        .map(|(id, tok)| (tok.to_string(), id as u32))
        .collect())
}

/// `tokenizer.ggml.merges`: each entry is the two merged parts separated by one space
/// (byte-level tokens never contain a raw space).
fn merges(gguf: &GgufFile) -> Result<Vec<(String, String)>> {
    let key = "tokenizer.ggml.merges";
    gguf.get_str_array(key)?
        .iter()
        .enumerate()
        .map(|(i, m)| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| {
                    Error::format(gguf.path(), format!("{key}[{i}] = {m:?} is not two tokens"))
                })
        })
        .collect()
}

/// `tokenizer.ggml.token_type`, one per token; absent means every token is normal.
fn token_types(gguf: &GgufFile, n_tokens: usize) -> Result<Vec<i64>> {
    let key = "tokenizer.ggml.token_type";
    if gguf.get(key).is_none() {
        return Ok(vec![1; n_tokens]);
    }
    let types = gguf.get_int_array(key)?;
    if types.len() != n_tokens {
        return Err(Error::format(
            gguf.path(),
            format!("{key} has {} entries for {n_tokens} tokens", types.len()),
        ));
    }
    Ok(types)
}
