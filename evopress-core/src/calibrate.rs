//! The block-wise calibration engine (docs/sparsegpt-gptq.md), shared by the SparseGPT and GPTQ
//! database builders.
//!
//! The model runs one block at a time over every calibration window. Only one
//! block-boundary's activations live in memory: the residual stream of each window at the
//! current block. For block `b` a builder asks for [`BlockCalibrator::hessians`] (the block
//! runs with a tap on its four linear inputs, the stream is left as it was), compresses the
//! block's units, then [`BlockCalibrator::advance`]s the stream through the dense block
//! (SparseGPT: dense propagation) or through a replacement whose linears are compressed
//! variants (GPTQ: quantized propagation, §2.4.4). A resumed build recomputes the prefix
//! with [`BlockCalibrator::skip_to`] instead of storing activations on disk.
//!
//! Hessians (§2.4.5): `H = (2/n_seq)·Σ_seq X_seqᵀX_seq`, `n_seq` counting windows. Each
//! window's `XᵀX` comes from the device's `gram` (f32 GEMM) and is summed in f64, then scaled
//! once at the end: the same value as the original's running average, with less rounding.

use crate::error::{Error, Result};
use crate::model::{Block, Layout, LinearInput, LinearKind, Model, Scratch};
use evopress_kernels::Device;
use rayon::prelude::*;

/// A symmetric `[dim, dim]` Hessian of one linear input.
#[derive(Clone, Debug, PartialEq)]
pub struct Hessian {
    pub dim: usize,
    /// Row-major `dim × dim`.
    pub data: Vec<f64>,
    /// Sequences (windows) averaged over.
    pub n_seq: usize,
}

impl Hessian {
    pub fn get(&self, i: usize, j: usize) -> f64 {
        self.data[i * self.dim + j]
    }
    pub fn diag(&self) -> Vec<f64> {
        (0..self.dim).map(|i| self.get(i, i)).collect()
    }
}

/// The four Hessians of one block, from one pass over its inputs (all units of a block use
/// the same pass).
#[derive(Clone, Debug)]
pub struct BlockHessians {
    pub block: usize,
    hessians: Vec<Hessian>,
}

impl BlockHessians {
    pub fn get(&self, input: LinearInput) -> &Hessian {
        &self.hessians[input.index()]
    }
    /// The Hessian layer `kind` is compressed with.
    pub fn for_kind(&self, kind: LinearKind) -> &Hessian {
        self.get(kind.input())
    }
    pub fn n_seq(&self) -> usize {
        self.hessians[0].n_seq
    }
}

/// Drives a model block by block over calibration windows; see the module docs.
pub struct BlockCalibrator<'m, D: Device + ?Sized> {
    model: &'m Model,
    dev: &'m D,
    windows: Vec<Vec<u32>>,
    /// Residual stream of every window at the input of `block`, `[len, hidden]` each.
    stream: Vec<Vec<f32>>,
    block: usize,
    scratch: Scratch,
}

impl<'m, D: Device + ?Sized> BlockCalibrator<'m, D> {
    /// Embeds every window (tokens as given: no BOS is added).
    pub fn new(model: &'m Model, dev: &'m D, windows: Vec<Vec<u32>>) -> Result<Self> {
        if windows.is_empty() {
            return Err(Error::Invalid(
                "calibration needs at least one window".into(),
            ));
        }
        for (i, w) in windows.iter().enumerate() {
            if w.is_empty() || w.len() > model.max_positions() {
                return Err(Error::Invalid(format!(
                    "calibration window {i} has {} tokens; it needs 1..={} (the model's positions)",
                    w.len(),
                    model.max_positions()
                )));
            }
        }
        let mut cal = BlockCalibrator {
            model,
            dev,
            windows,
            stream: Vec::new(),
            block: 0,
            scratch: Scratch::default(),
        };
        cal.reset()?;
        Ok(cal)
    }

    /// Back to the embeddings (block 0).
    fn reset(&mut self) -> Result<()> {
        self.stream = self
            .windows
            .iter()
            .map(|w| self.model.embed(w))
            .collect::<Result<_>>()?;
        self.block = 0;
        Ok(())
    }

    /// The block whose inputs the stream currently holds.
    pub fn block(&self) -> usize {
        self.block
    }
    pub fn windows(&self) -> &[Vec<u32>] {
        &self.windows
    }
    /// Residual stream of window `i` at the input of [`Self::block`] (`[len, hidden]`).
    pub fn stream(&self, i: usize) -> &[f32] {
        &self.stream[i]
    }

    fn check_block(&self) -> Result<()> {
        if self.block >= self.model.layers.len() {
            return Err(Error::Invalid(format!(
                "calibration is past the last block ({} blocks)",
                self.model.layers.len()
            )));
        }
        Ok(())
    }

    /// Hessians of the current block's four linear inputs, from the dense block run over
    /// every window. The stream does not move.
    pub fn hessians(&mut self) -> Result<BlockHessians> {
        self.check_block()?;
        self.pass(None, true, false).map(|h| h.expect("collected"))
    }

    /// [`Self::hessians`] and [`Self::advance`] through the dense block in one pass: the
    /// dense-propagation builders' (SparseGPT's) step, half the block forwards.
    pub fn hessians_and_advance(&mut self) -> Result<BlockHessians> {
        self.check_block()?;
        let h = self.pass(None, true, true)?.expect("collected");
        self.block += 1;
        Ok(h)
    }

    /// Moves the stream through the current block, the model's own or `replacement` (same
    /// shapes, compressed linears), to the next block.
    pub fn advance(&mut self, replacement: Option<&Block>) -> Result<()> {
        self.check_block()?;
        self.pass(replacement, false, true)?;
        self.block += 1;
        Ok(())
    }

    /// Positions the stream at the input of block `b`, running blocks `..b` with
    /// `replacement_for(i)` where it gives one (the dense block where `None`). Going back
    /// restarts from the embeddings.
    pub fn skip_to(
        &mut self,
        b: usize,
        mut replacement_for: impl FnMut(usize) -> Option<Block>,
    ) -> Result<()> {
        if b > self.model.layers.len() {
            return Err(Error::Invalid(format!(
                "cannot skip to block {b}: the model has {} blocks",
                self.model.layers.len()
            )));
        }
        if b < self.block {
            self.reset()?;
        }
        while self.block < b {
            let r = replacement_for(self.block);
            self.advance(r.as_ref())?;
        }
        Ok(())
    }

    /// The Hessian of the LM head's input (the final norm's output) over every window, once the
    /// stream has passed the last block: what the head is compressed with, like a linear's
    /// input Hessian.
    pub fn head_hessian(&self) -> Result<Hessian> {
        let n = self.model.layers.len();
        if self.block != n {
            return Err(Error::Invalid(format!(
                "the LM head's Hessian needs the stream after the last block ({n}), it is at \
                 block {}",
                self.block
            )));
        }
        let mut acc = Accumulator::new(self.model.hidden_size());
        for h in &self.stream {
            acc.add(self.dev, &self.model.final_norm(self.dev, h));
        }
        Ok(acc.finish(self.stream.len()))
    }

    /// Runs one block over every window (one at a time, each GEMM parallel inside),
    /// collecting Hessians and/or keeping the outputs as the new stream.
    fn pass(
        &mut self,
        replacement: Option<&Block>,
        collect: bool,
        keep: bool,
    ) -> Result<Option<BlockHessians>> {
        let (model, dev) = (self.model, self.dev);
        let block = replacement.unwrap_or(&model.layers[self.block]);
        let dims = LinearInput::ALL.map(|i| match i {
            LinearInput::AttnIn | LinearInput::MlpIn => model.hidden_size(),
            LinearInput::OIn => block.self_attn.o_proj.weight.cols,
            LinearInput::DownIn => block.mlp.down_proj.weight.cols,
        });
        let mut acc: Vec<Accumulator> = match collect {
            true => dims.iter().map(|&d| Accumulator::new(d)).collect(),
            false => Vec::new(),
        };
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut copy = Vec::new();
        for h in &mut self.stream {
            let layout = Layout {
                batch: 1,
                seq: h.len() / model.hidden_size(),
                pos0: 0,
            };
            let target: &mut Vec<f32> = if keep {
                h
            } else {
                copy.clear();
                copy.extend_from_slice(h);
                &mut copy
            };
            if collect {
                let mut tap = |input: LinearInput, x: &[f32]| acc[input.index()].add(dev, x);
                model.block_forward_tapped(
                    dev,
                    block,
                    target,
                    layout,
                    &mut scratch,
                    Some(&mut tap),
                );
            } else {
                model.block_forward_tapped(dev, block, target, layout, &mut scratch, None);
            }
        }
        self.scratch = scratch;
        let n_seq = self.stream.len();
        Ok(collect.then(|| BlockHessians {
            block: self.block,
            hessians: acc.into_iter().map(|a| a.finish(n_seq)).collect(),
        }))
    }
}

/// `Σ XᵀX` of one input in f64, with the f32 buffer each window's Gram lands in.
struct Accumulator {
    dim: usize,
    sum: Vec<f64>,
    gram: Vec<f32>,
}

impl Accumulator {
    fn new(dim: usize) -> Self {
        Accumulator {
            dim,
            sum: vec![0.0; dim * dim],
            gram: vec![0.0; dim * dim],
        }
    }

    fn add<D: Device + ?Sized>(&mut self, dev: &D, x: &[f32]) {
        dev.gram(x, self.dim, &mut self.gram);
        self.sum
            .par_chunks_mut(self.dim)
            .zip(self.gram.par_chunks(self.dim))
            .for_each(|(s, g)| s.iter_mut().zip(g).for_each(|(s, &g)| *s += g as f64));
    }

    fn finish(self, n_seq: usize) -> Hessian {
        let scale = 2.0 / n_seq as f64;
        let mut data = self.sum;
        data.par_iter_mut().for_each(|v| *v *= scale);
        Hessian {
            dim: self.dim,
            data,
            n_seq,
        }
    }
}
