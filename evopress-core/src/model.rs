//! The decoder forward pass, written once over [`Device`] for every supported architecture.
//!
//! Llama, Mistral, Qwen2 and Phi-3 are the same computation:
//!
//! ```text
//! h = embed(tokens)
//! for each block:
//!     h = h + o_proj(attention(rope(q_proj(rms(h))), rope(k_proj(rms(h))), v_proj(rms(h))))
//!     h = h + down_proj(silu(gate_proj(rms(h))) * up_proj(rms(h)))
//! logits = lm_head(rms(h))
//! ```
//!
//! They differ only in how tensors are stored (Phi-3 fuses q/k/v and gate/up: we keep row
//! views into the fused tensor, never copies), whether q/k/v carry biases (Qwen2), and whether
//! the LM head is the embedding table (tied).
//!
//! Depth pruning needs no weights changed: a [`BlockPlan`] says which sub-blocks run, and a
//! skipped sub-block contributes nothing to the residual stream (its norm is skipped too).

use crate::config::{Arch, ModelConfig};
use crate::error::{Error, Result};
use crate::source::TensorSource;
use evopress_kernels::{AttnShape, Device, RopeTable, Weight};
use std::sync::Arc;

/// A linear layer `y = x·Wᵀ (+ b)`, `W` being `[out, in]`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Weight,
    pub bias: Option<Vec<f32>>,
}

impl Linear {
    pub fn out_features(&self) -> usize {
        self.weight.rows
    }

    fn forward<D: Device + ?Sized>(&self, dev: &D, x: &[f32], out: &mut [f32]) {
        dev.matmul_wt(x, &self.weight, out);
        if let Some(b) = &self.bias {
            dev.add_bias(out, b);
        }
    }
}

#[derive(Clone, Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
}

#[derive(Clone, Debug)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

/// One decoder block: pre-norm attention then pre-norm SwiGLU MLP, each on the residual.
#[derive(Clone, Debug)]
pub struct Block {
    pub input_layernorm: Vec<f32>,
    pub self_attn: Attention,
    pub post_attention_layernorm: Vec<f32>,
    pub mlp: Mlp,
}

/// Which sub-blocks of one block run. Depth pruning turns them off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockPlan {
    pub attn: bool,
    pub mlp: bool,
}

impl BlockPlan {
    pub const FULL: BlockPlan = BlockPlan {
        attn: true,
        mlp: true,
    };
}

/// Keys and values of every past position, per layer, for one sequence (decoding). A batch
/// of sequences decoded in lockstep holds one cache each.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    len: usize,
}

impl KvCache {
    pub fn new(n_layers: usize) -> Self {
        KvCache {
            keys: vec![Vec::new(); n_layers],
            values: vec![Vec::new(); n_layers],
            len: 0,
        }
    }
    /// Positions already cached.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Tokens laid out as `batch` sequences of `seq` tokens each, all starting at position `pos0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub batch: usize,
    pub seq: usize,
    pub pos0: usize,
}

impl Layout {
    pub fn tokens(&self) -> usize {
        self.batch * self.seq
    }
}

/// The four distinct inputs of a block's linear layers, as a calibration tap sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LinearInput {
    /// `rms(h)` before attention: feeds q, k and v.
    AttnIn,
    /// The attention context: feeds o_proj.
    OIn,
    /// `rms(h)` before the MLP: feeds gate and up.
    MlpIn,
    /// `silu(gate) * up`: feeds down_proj.
    DownIn,
}

impl LinearInput {
    pub const ALL: [LinearInput; 4] = [
        LinearInput::AttnIn,
        LinearInput::OIn,
        LinearInput::MlpIn,
        LinearInput::DownIn,
    ];
    /// Position in [`LinearInput::ALL`], for per-input arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The linear layers of one block, in the order the forward runs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LinearKind {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl LinearKind {
    pub const ALL: [LinearKind; 7] = [
        LinearKind::Q,
        LinearKind::K,
        LinearKind::V,
        LinearKind::O,
        LinearKind::Gate,
        LinearKind::Up,
        LinearKind::Down,
    ];
    /// Which activation this layer multiplies: layers sharing one share its Hessian.
    pub fn input(self) -> LinearInput {
        match self {
            LinearKind::Q | LinearKind::K | LinearKind::V => LinearInput::AttnIn,
            LinearKind::O => LinearInput::OIn,
            LinearKind::Gate | LinearKind::Up => LinearInput::MlpIn,
            LinearKind::Down => LinearInput::DownIn,
        }
    }
    /// The HF module path inside a block, e.g. `self_attn.q_proj`.
    pub fn module(self) -> &'static str {
        match self {
            LinearKind::Q => "self_attn.q_proj",
            LinearKind::K => "self_attn.k_proj",
            LinearKind::V => "self_attn.v_proj",
            LinearKind::O => "self_attn.o_proj",
            LinearKind::Gate => "mlp.gate_proj",
            LinearKind::Up => "mlp.up_proj",
            LinearKind::Down => "mlp.down_proj",
        }
    }
}

impl Block {
    pub fn linear(&self, kind: LinearKind) -> &Linear {
        match kind {
            LinearKind::Q => &self.self_attn.q_proj,
            LinearKind::K => &self.self_attn.k_proj,
            LinearKind::V => &self.self_attn.v_proj,
            LinearKind::O => &self.self_attn.o_proj,
            LinearKind::Gate => &self.mlp.gate_proj,
            LinearKind::Up => &self.mlp.up_proj,
            LinearKind::Down => &self.mlp.down_proj,
        }
    }
    /// Swapping one layer for a compressed variant is how a replacement block is built.
    pub fn linear_mut(&mut self, kind: LinearKind) -> &mut Linear {
        match kind {
            LinearKind::Q => &mut self.self_attn.q_proj,
            LinearKind::K => &mut self.self_attn.k_proj,
            LinearKind::V => &mut self.self_attn.v_proj,
            LinearKind::O => &mut self.self_attn.o_proj,
            LinearKind::Gate => &mut self.mlp.gate_proj,
            LinearKind::Up => &mut self.mlp.up_proj,
            LinearKind::Down => &mut self.mlp.down_proj,
        }
    }
}

/// Observer of the linear layers' inputs while a block runs (calibration). `None` on the
/// normal forward, which then costs one branch per sub-block.
pub type Tap<'a> = Option<&'a mut dyn FnMut(LinearInput, &[f32])>;

fn tap_call(tap: &mut Tap<'_>, input: LinearInput, x: &[f32]) {
    if let Some(t) = tap {
        t(input, x);
    }
}

/// Activation buffers of one block, reused by every block of a forward pass. Every op
/// overwrites its whole output, so stale contents from the previous block never leak.
/// Public (opaque) so block-by-block drivers such as the calibration engine reuse them too.
#[derive(Default)]
pub struct Scratch {
    normed: Vec<f32>,
    attn: AttnScratch,
    mlp: MlpScratch,
}

#[derive(Default)]
struct AttnScratch {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    ctx: Vec<f32>,
    out: Vec<f32>,
}

#[derive(Default)]
struct MlpScratch {
    gate: Vec<f32>,
    up: Vec<f32>,
    out: Vec<f32>,
}

/// `buf` as a slice of exactly `len` elements, growing it if needed (contents unspecified).
fn resized(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buf.resize(len, 0.0);
    buf
}

#[derive(Clone, Debug)]
pub struct Model {
    pub config: ModelConfig,
    pub embed_tokens: Weight,
    pub layers: Vec<Block>,
    pub norm: Vec<f32>,
    /// The output projection; for tied models it shares the embedding's storage.
    pub lm_head: Weight,
    /// Shared, so that a candidate (a clone with some weights swapped) costs no table copy.
    rope: Arc<RopeTable>,
}

/// Rows of the LM head computed at once by [`Model::sum_over_logits`].
const HEAD_CHUNK_ROWS: usize = 128;

/// The longest context we precompute RoPE tables for; longer inputs are refused clearly.
const MAX_ROPE_POSITIONS: usize = 1 << 16;

impl Model {
    /// Assembles the model from any tensor source, checking every tensor's presence and shape
    /// against the config (errors name the file and tensor).
    pub fn from_source(config: ModelConfig, src: &dyn TensorSource) -> Result<Model> {
        let c = &config;
        let (h, inter) = (c.hidden_size, c.intermediate_size);
        let q_dim = c.num_attention_heads * c.head_dim;
        let kv_dim = c.num_key_value_heads * c.head_dim;
        let take = |name: &str, shape: &[usize]| -> Result<Weight> {
            let got = src.shape(name).ok_or_else(|| Error::MissingTensor {
                path: src.path().into(),
                name: name.into(),
            })?;
            if got != shape {
                return Err(Error::Shape {
                    path: src.path().into(),
                    name: name.into(),
                    expected: shape.to_vec(),
                    got,
                });
            }
            src.weight(name)
        };
        let vector = |name: &str, len: usize| take(name, &[len]).map(|w| w.to_f32_vec());
        let linear = |name: &str, out: usize, inp: usize, bias: bool| -> Result<Linear> {
            Ok(Linear {
                weight: take(&format!("{name}.weight"), &[out, inp])?,
                bias: if bias {
                    Some(vector(&format!("{name}.bias"), out)?)
                } else {
                    None
                },
            })
        };

        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let (self_attn, mlp) = if c.arch == Arch::Phi3 {
                let qkv = take(
                    &format!("{p}.self_attn.qkv_proj.weight"),
                    &[q_dim + 2 * kv_dim, h],
                )?;
                let gate_up = take(&format!("{p}.mlp.gate_up_proj.weight"), &[2 * inter, h])?;
                let view = |w: &Weight, first, count| Linear {
                    weight: w.row_slice(first, count),
                    bias: None,
                };
                (
                    Attention {
                        q_proj: view(&qkv, 0, q_dim),
                        k_proj: view(&qkv, q_dim, kv_dim),
                        v_proj: view(&qkv, q_dim + kv_dim, kv_dim),
                        o_proj: linear(&format!("{p}.self_attn.o_proj"), h, q_dim, false)?,
                    },
                    Mlp {
                        gate_proj: view(&gate_up, 0, inter),
                        up_proj: view(&gate_up, inter, inter),
                        down_proj: linear(&format!("{p}.mlp.down_proj"), h, inter, false)?,
                    },
                )
            } else {
                let b = c.attention_bias;
                // Llama's `attention_bias` also puts a bias on o_proj; Qwen2's never has one.
                let o_bias = b && c.arch == Arch::Llama;
                (
                    Attention {
                        q_proj: linear(&format!("{p}.self_attn.q_proj"), q_dim, h, b)?,
                        k_proj: linear(&format!("{p}.self_attn.k_proj"), kv_dim, h, b)?,
                        v_proj: linear(&format!("{p}.self_attn.v_proj"), kv_dim, h, b)?,
                        o_proj: linear(&format!("{p}.self_attn.o_proj"), h, q_dim, o_bias)?,
                    },
                    Mlp {
                        gate_proj: linear(&format!("{p}.mlp.gate_proj"), inter, h, false)?,
                        up_proj: linear(&format!("{p}.mlp.up_proj"), inter, h, false)?,
                        down_proj: linear(&format!("{p}.mlp.down_proj"), h, inter, false)?,
                    },
                )
            };
            layers.push(Block {
                input_layernorm: vector(&format!("{p}.input_layernorm.weight"), h)?,
                self_attn,
                post_attention_layernorm: vector(
                    &format!("{p}.post_attention_layernorm.weight"),
                    h,
                )?,
                mlp,
            });
        }

        let embed_tokens = take("model.embed_tokens.weight", &[c.vocab_size, h])?;
        let lm_head = if c.tie_word_embeddings {
            embed_tokens.clone()
        } else {
            take("lm_head.weight", &[c.vocab_size, h])?
        };
        let rope = Arc::new(RopeTable::new(
            &c.rope_inv_freq(),
            c.max_position_embeddings.min(MAX_ROPE_POSITIONS),
        ));
        Ok(Model {
            norm: vector("model.norm.weight", h)?,
            embed_tokens,
            lm_head,
            layers,
            rope,
            config,
        })
    }

    /// Bytes the model's matrices take in their storage (the embedding, every linear layer
    /// and an untied LM head; mapped weights count at their file size).
    pub fn weight_bytes(&self) -> usize {
        let linears: usize = self
            .layers
            .iter()
            .flat_map(|b| LinearKind::ALL.map(|k| b.linear(k).weight.bytes()))
            .sum();
        let head = if self.config.tie_word_embeddings {
            0
        } else {
            self.lm_head.bytes()
        };
        self.embed_tokens.bytes() + linears + head
    }

    /// Layer `kind` of block `block`.
    pub fn linear(&self, block: usize, kind: LinearKind) -> &Linear {
        self.layers[block].linear(kind)
    }
    pub fn linear_mut(&mut self, block: usize, kind: LinearKind) -> &mut Linear {
        self.layers[block].linear_mut(kind)
    }

    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }
    pub fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }
    /// The longest sequence (positions) the forward pass accepts.
    pub fn max_positions(&self) -> usize {
        self.rope.max_positions
    }

    /// Embedding rows for `tokens`, `[n, hidden]`.
    pub fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let h = self.hidden_size();
        let mut out = vec![0f32; tokens.len() * h];
        for (row, &t) in out.chunks_exact_mut(h).zip(tokens) {
            if t as usize >= self.vocab_size() {
                return Err(Error::Invalid(format!(
                    "token id {t} is out of range for a vocabulary of {}",
                    self.vocab_size()
                )));
            }
            self.embed_tokens.decode_rows_into(t as usize, row);
        }
        Ok(out)
    }

    /// Runs block `index` in place on the residual stream `h` (`[layout.tokens(), hidden]`).
    /// With caches (one per sequence of the batch), keys and values are appended and
    /// attention sees the past.
    pub fn block_forward<D: Device + ?Sized>(
        &self,
        dev: &D,
        index: usize,
        h: &mut [f32],
        layout: Layout,
        plan: BlockPlan,
        cache: Option<&mut [KvCache]>,
    ) {
        let mut scratch = Scratch::default();
        self.block_forward_in(dev, index, h, layout, plan, cache, &mut scratch);
    }

    /// Runs `block` (this model's own or a replacement whose linears are compressed
    /// variants) in place on `h`, fully and without a cache, calling `tap` with each of
    /// the four linear inputs as they are computed. The same code as the normal forward.
    pub fn block_forward_tapped<D: Device + ?Sized>(
        &self,
        dev: &D,
        block: &Block,
        h: &mut [f32],
        layout: Layout,
        scratch: &mut Scratch,
        tap: Tap<'_>,
    ) {
        self.run_block(
            dev,
            block,
            0,
            h,
            layout,
            BlockPlan::FULL,
            None,
            scratch,
            tap,
        );
    }

    /// [`Model::block_forward`] with the activations in `scratch`, which the forward keeps
    /// across blocks: allocating (and faulting in) ~10 MB of fresh buffers per block at
    /// L=512 cost a few percent of the forward.
    #[allow(clippy::too_many_arguments)]
    fn block_forward_in<D: Device + ?Sized>(
        &self,
        dev: &D,
        index: usize,
        h: &mut [f32],
        layout: Layout,
        plan: BlockPlan,
        cache: Option<&mut [KvCache]>,
        scratch: &mut Scratch,
    ) {
        let block = &self.layers[index];
        self.run_block(dev, block, index, h, layout, plan, cache, scratch, None);
    }

    /// The one block forward: `block`'s weights, `index` only locating its cache slots.
    #[allow(clippy::too_many_arguments)]
    fn run_block<D: Device + ?Sized>(
        &self,
        dev: &D,
        block: &Block,
        index: usize,
        h: &mut [f32],
        layout: Layout,
        plan: BlockPlan,
        cache: Option<&mut [KvCache]>,
        scratch: &mut Scratch,
        mut tap: Tap<'_>,
    ) {
        let eps = self.config.rms_norm_eps;
        let normed = resized(&mut scratch.normed, h.len());
        if plan.attn {
            dev.rms_norm(h, &block.input_layernorm, eps, normed);
            tap_call(&mut tap, LinearInput::AttnIn, normed);
            let attn = &block.self_attn;
            let s = &mut scratch.attn;
            let out = self.attention(dev, attn, index, normed, layout, cache, s, &mut tap);
            dev.add_assign(h, out);
        } else if let Some(caches) = cache {
            // A dropped attention still occupies its cache slots, so every layer's cache
            // stays the same length: fill them with zeros (never read by this layer).
            let kv_dim = self.config.num_key_value_heads * self.config.head_dim;
            for cache in caches {
                cache.keys[index].resize((layout.pos0 + layout.seq) * kv_dim, 0.0);
                cache.values[index].resize((layout.pos0 + layout.seq) * kv_dim, 0.0);
            }
        }
        if plan.mlp {
            dev.rms_norm(h, &block.post_attention_layernorm, eps, normed);
            tap_call(&mut tap, LinearInput::MlpIn, normed);
            let s = &mut scratch.mlp;
            let out = self.mlp(dev, &block.mlp, normed, layout.tokens(), s, &mut tap);
            dev.add_assign(h, out);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn attention<'s, D: Device + ?Sized>(
        &self,
        dev: &D,
        attn: &Attention,
        index: usize,
        x: &[f32],
        layout: Layout,
        cache: Option<&mut [KvCache]>,
        s: &'s mut AttnScratch,
        tap: &mut Tap<'_>,
    ) -> &'s [f32] {
        let c = &self.config;
        let n = layout.tokens();
        let (q_dim, kv_dim) = (attn.q_proj.out_features(), attn.k_proj.out_features());
        let q = resized(&mut s.q, n * q_dim);
        let k = resized(&mut s.k, n * kv_dim);
        let v = resized(&mut s.v, n * kv_dim);
        attn.q_proj.forward(dev, x, q);
        attn.k_proj.forward(dev, x, k);
        attn.v_proj.forward(dev, x, v);

        let positions: Vec<usize> = (0..layout.batch)
            .flat_map(|_| layout.pos0..layout.pos0 + layout.seq)
            .collect();
        dev.rope(q, c.num_attention_heads, &positions, &self.rope);
        dev.rope(k, c.num_key_value_heads, &positions, &self.rope);

        let ctx = resized(&mut s.ctx, n * q_dim);
        let shape = |kv_len| AttnShape {
            batch: layout.batch,
            q_len: layout.seq,
            kv_len,
            n_heads: c.num_attention_heads,
            n_kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
        };
        match cache {
            Some(caches) => {
                // Each sequence attends over its own cache: one batch-1 attention apiece.
                assert_eq!(caches.len(), layout.batch, "one KV cache per sequence");
                let kv_len = layout.pos0 + layout.seq;
                let (q_rows, kv_rows) = (layout.seq * q_dim, layout.seq * kv_dim);
                for (b, cache) in caches.iter_mut().enumerate() {
                    assert_eq!(layout.pos0, cache.keys[index].len() / kv_dim);
                    cache.keys[index].extend_from_slice(&k[b * kv_rows..(b + 1) * kv_rows]);
                    cache.values[index].extend_from_slice(&v[b * kv_rows..(b + 1) * kv_rows]);
                    dev.attention(
                        &q[b * q_rows..(b + 1) * q_rows],
                        &cache.keys[index],
                        &cache.values[index],
                        &mut ctx[b * q_rows..(b + 1) * q_rows],
                        AttnShape {
                            batch: 1,
                            ..shape(kv_len)
                        },
                    );
                }
            }
            None => dev.attention(q, k, v, ctx, shape(layout.seq)),
        }
        tap_call(tap, LinearInput::OIn, ctx);
        let out = resized(&mut s.out, n * c.hidden_size);
        attn.o_proj.forward(dev, ctx, out);
        out
    }

    fn mlp<'s, D: Device + ?Sized>(
        &self,
        dev: &D,
        mlp: &Mlp,
        x: &[f32],
        n: usize,
        s: &'s mut MlpScratch,
        tap: &mut Tap<'_>,
    ) -> &'s [f32] {
        let inter = mlp.gate_proj.out_features();
        let gate = resized(&mut s.gate, n * inter);
        let up = resized(&mut s.up, n * inter);
        mlp.gate_proj.forward(dev, x, gate);
        mlp.up_proj.forward(dev, x, up);
        dev.silu_mul(gate, up);
        tap_call(tap, LinearInput::DownIn, gate);
        let out = resized(&mut s.out, n * self.config.hidden_size);
        mlp.down_proj.forward(dev, gate, out);
        out
    }

    /// Final RMSNorm of the residual stream, `[n, hidden]`.
    pub fn final_norm<D: Device + ?Sized>(&self, dev: &D, h: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; h.len()];
        dev.rms_norm(h, &self.norm, self.config.rms_norm_eps, &mut out);
        out
    }

    /// Logits `[n, vocab]` of already-normalised hidden states.
    pub fn lm_head<D: Device + ?Sized>(&self, dev: &D, normed: &[f32]) -> Vec<f32> {
        let n = normed.len() / self.hidden_size();
        let mut logits = vec![0f32; n * self.vocab_size()];
        dev.matmul_wt(normed, &self.lm_head, &mut logits);
        logits
    }

    /// Sums `score(first_row, logits)` over the logits of `normed[..rows]`, computed
    /// `HEAD_CHUNK_ROWS` rows at a time so the buffer stays `rows x vocab` small instead of
    /// `positions x vocab` (100 MB at 512 positions on a 49k vocabulary).
    pub fn sum_over_logits<D: Device + ?Sized>(
        &self,
        dev: &D,
        normed: &[f32],
        rows: usize,
        mut score: impl FnMut(usize, &[f32]) -> f64,
    ) -> f64 {
        let h = self.hidden_size();
        (0..rows)
            .step_by(HEAD_CHUNK_ROWS)
            .map(|start| {
                let end = (start + HEAD_CHUNK_ROWS).min(rows);
                score(start, &self.lm_head(dev, &normed[start * h..end * h]))
            })
            .sum()
    }

    /// Checks a layout against the RoPE table and the plan length.
    fn check_layout(&self, layout: Layout, plan: &[BlockPlan]) -> Result<()> {
        if layout.pos0 + layout.seq > self.max_positions() {
            return Err(Error::Invalid(format!(
                "sequence of {} positions exceeds the model's {} (max_position_embeddings)",
                layout.pos0 + layout.seq,
                self.max_positions()
            )));
        }
        if plan.len() != self.layers.len() {
            return Err(Error::Invalid(format!(
                "block plan has {} entries, the model has {} blocks",
                plan.len(),
                self.layers.len()
            )));
        }
        Ok(())
    }

    /// Final-normed hidden states `[batch * seq, hidden]` of `batch` equal-length sequences
    /// laid end to end in `tokens`, with sub-blocks run according to `plan`.
    pub fn hidden_states<D: Device + ?Sized>(
        &self,
        dev: &D,
        tokens: &[u32],
        batch: usize,
        plan: &[BlockPlan],
    ) -> Result<Vec<f32>> {
        let layout = Layout {
            batch,
            seq: tokens.len() / batch.max(1),
            pos0: 0,
        };
        if layout.tokens() != tokens.len() {
            return Err(Error::Invalid(format!(
                "{} tokens do not split into {batch} equal sequences",
                tokens.len()
            )));
        }
        self.check_layout(layout, plan)?;
        let mut h = self.embed(tokens)?;
        self.run_blocks(dev, &mut h, layout, plan, 0);
        Ok(self.final_norm(dev, &h))
    }

    /// Runs blocks `from..plan.len()` in place on the residual stream `h`, sharing one set
    /// of activation buffers: the path of a candidate evaluated from its first changed block.
    pub fn run_blocks<D: Device + ?Sized>(
        &self,
        dev: &D,
        h: &mut [f32],
        layout: Layout,
        plan: &[BlockPlan],
        from: usize,
    ) {
        let mut scratch = Scratch::default();
        for (i, &p) in plan.iter().enumerate().skip(from) {
            self.block_forward_in(dev, i, h, layout, p, None, &mut scratch);
        }
    }

    /// Logits `[batch * seq, vocab]` for `batch` equal-length sequences (dense model).
    pub fn logits<D: Device + ?Sized>(
        &self,
        dev: &D,
        tokens: &[u32],
        batch: usize,
    ) -> Result<Vec<f32>> {
        let plan = vec![BlockPlan::FULL; self.layers.len()];
        let h = self.hidden_states(dev, tokens, batch, &plan)?;
        Ok(self.lm_head(dev, &h))
    }

    /// Feeds `tokens` after the cached positions and returns the logits of the last one.
    pub fn step<D: Device + ?Sized>(
        &self,
        dev: &D,
        tokens: &[u32],
        cache: &mut KvCache,
        plan: &[BlockPlan],
    ) -> Result<Vec<f32>> {
        self.step_batch(dev, tokens, std::slice::from_mut(cache), plan)
    }

    /// Feeds `caches.len()` sequences, `tokens.len() / caches.len()` new tokens each laid
    /// end to end, after their cached positions (the same count for every sequence), and
    /// returns the logits `[batch, vocab]` of each one's last token. Decoding many
    /// sequences in lockstep reads every weight once per step for all of them.
    pub fn step_batch<D: Device + ?Sized>(
        &self,
        dev: &D,
        tokens: &[u32],
        caches: &mut [KvCache],
        plan: &[BlockPlan],
    ) -> Result<Vec<f32>> {
        let batch = caches.len();
        let pos0 = caches.first().map_or(0, |c| c.len);
        if batch == 0 || tokens.is_empty() || !tokens.len().is_multiple_of(batch) {
            return Err(Error::Invalid(format!(
                "{} tokens do not split into {batch} sequences",
                tokens.len()
            )));
        }
        if caches.iter().any(|c| c.len != pos0) {
            return Err(Error::Invalid(
                "sequences decoded together must have the same number of cached positions".into(),
            ));
        }
        let layout = Layout {
            batch,
            seq: tokens.len() / batch,
            pos0,
        };
        self.check_layout(layout, plan)?;
        let mut h = self.embed(tokens)?;
        let mut scratch = Scratch::default();
        for (i, &p) in plan.iter().enumerate() {
            self.block_forward_in(dev, i, &mut h, layout, p, Some(&mut *caches), &mut scratch);
        }
        for cache in caches.iter_mut() {
            cache.len += layout.seq;
        }
        let hidden = self.hidden_size();
        let last: Vec<f32> = (0..batch)
            .flat_map(|b| {
                let row = (b + 1) * layout.seq - 1;
                h[row * hidden..(row + 1) * hidden].iter().copied()
            })
            .collect();
        Ok(self.lm_head(dev, &self.final_norm(dev, &last)))
    }

    /// Greedy decoding: `max_tokens` new ids after `prompt`, stopping early at `stop`.
    pub fn generate<D: Device + ?Sized>(
        &self,
        dev: &D,
        prompt: &[u32],
        max_tokens: usize,
        stop: Option<u32>,
        plan: &[BlockPlan],
    ) -> Result<Vec<u32>> {
        self.generate_with(dev, prompt, max_tokens, stop, plan, |logits| {
            Ok(argmax(logits) as u32)
        })
    }

    /// Decoding with `pick` choosing each new id from the last position's logits (greedy,
    /// or sampled: `self_text::sample`).
    pub fn generate_with<D: Device + ?Sized>(
        &self,
        dev: &D,
        prompt: &[u32],
        max_tokens: usize,
        stop: Option<u32>,
        plan: &[BlockPlan],
        mut pick: impl FnMut(&[f32]) -> Result<u32>,
    ) -> Result<Vec<u32>> {
        if prompt.is_empty() {
            return Err(Error::Invalid("the prompt encodes to no tokens".into()));
        }
        let mut cache = KvCache::new(self.layers.len());
        let mut logits = self.step(dev, prompt, &mut cache, plan)?;
        let mut out = Vec::with_capacity(max_tokens);
        for _ in 0..max_tokens {
            let next = pick(&logits)?;
            out.push(next);
            if Some(next) == stop || out.len() == max_tokens {
                break;
            }
            logits = self.step(dev, &[next], &mut cache, plan)?;
        }
        Ok(out)
    }
}

/// Index of the largest value (the first one on ties, like torch.argmax on CPU).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}
