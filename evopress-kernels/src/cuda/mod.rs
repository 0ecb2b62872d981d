//! The CUDA device (feature `cuda`): every [`Device`] op as a kernel from `kernels/*.cu`, driven
//! through cudarc with the driver library loaded at run time.
//!
//! Two layers:
//! - the `*_dev` methods take buffers already on the GPU ([`CudaSlice`], [`DeviceWeight`],
//!   [`DeviceRope`]) and only launch: what a device-resident forward pass will call, and what
//!   the kernel timings measure;
//! - the [`Device`] impl (and [`CudaDevice::nll_rows`], [`CudaDevice::kl_rows`]) take host
//!   slices like the CPU device: upload the inputs, launch, download the result. Correct, and
//!   checked op by op against the CPU oracle, but every call pays PCIe transfers (a weight is
//!   uploaded again for every matmul). Keeping activations and weights on the GPU across a
//!   whole forward pass is future work.
//!
//! Errors: [`CudaDevice::new`] reports a machine without a driver as [`CudaError::NoDriver`],
//! so callers fall back to the CPU. Once a device runs, a failed launch or copy panics with the
//! driver's message: the [`Device`] trait is infallible, and a GPU fault in the middle of a
//! forward pass leaves nothing to recover.

mod module;

use crate::{AttnShape, Device, RopeTable, Weight, WeightView};
use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DeviceRepr, DriverError, LaunchConfig,
    PushKernelArg,
};
use half::{bf16, f16};
use std::sync::Arc;

/// The launch-parameter structs and tile constants of `kernels/evopress_kernels.h`, as bindgen
/// wrote them in build.rs (some constants are used by the kernels only).
#[allow(non_camel_case_types, non_snake_case, dead_code)]
mod params {
    include!(concat!(env!("OUT_DIR"), "/kernel_params.rs"));
}
use params::*;

// SAFETY: bindgen's #[repr(C)] structs of ints and floats: the layout the kernels take by value.
unsafe impl DeviceRepr for MatmulParams {}
unsafe impl DeviceRepr for RmsNormParams {}
unsafe impl DeviceRepr for RopeParams {}
unsafe impl DeviceRepr for AttnParams {}
unsafe impl DeviceRepr for VocabParams {}

/// Why the CUDA device could not start.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("no CUDA driver found; falling back to CPU")]
    NoDriver,
    #[error("CUDA driver: {0}")]
    Driver(#[from] DriverError),
    #[error("kernels/{family}.cu has no PTX for this GPU and NVRTC (libnvrtc) was not found")]
    NoNvrtc { family: &'static str },
    #[error("NVRTC could not compile kernels/{family}.cu: {error}")]
    Compile {
        family: &'static str,
        error: cudarc::nvrtc::CompileError,
    },
}

/// A weight matrix copied to the GPU in its own dtype: f16 and bf16 stay 2 bytes per element
/// and are widened to f32 inside the matmul.
pub struct DeviceWeight {
    pub rows: usize,
    pub cols: usize,
    data: WeightData,
}

enum WeightData {
    F32(CudaSlice<f32>),
    F16(CudaSlice<f16>),
    BF16(CudaSlice<bf16>),
}

/// A [`RopeTable`]'s cos/sin tables on the GPU.
pub struct DeviceRope {
    pub half_dim: usize,
    pub max_positions: usize,
    cos: CudaSlice<f32>,
    sin: CudaSlice<f32>,
}

/// The loaded kernels, one field per `extern "C"` entry point.
struct Kernels {
    rms_norm: CudaFunction,
    rope: CudaFunction,
    silu_mul: CudaFunction,
    add_assign: CudaFunction,
    add_bias: CudaFunction,
    attention: CudaFunction,
    nll_rows: CudaFunction,
    kl_rows: CudaFunction,
    /// Tiled matmul and GEMV, indexed like [`WeightData`]: f32, f16, bf16 weights.
    matmul: [CudaFunction; 3],
    gemv: [CudaFunction; 3],
}

/// One GPU with the kernels loaded; ops run in order on one stream.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    k: Kernels,
}

/// Dynamic shared memory of the attention kernel for `head_dim` (see `kernels/attention.cu`:
/// padded key tile, value tile, query tile).
fn attention_smem_bytes(head_dim: usize) -> u32 {
    let (kv, q) = (EVO_ATTN_KV_TILE as usize, EVO_ATTN_Q_TILE as usize);
    (4 * (kv * (head_dim + 1) + kv * head_dim + q * head_dim)) as u32
}

/// The kernels take 32-bit sizes (see the header); larger tensors are a caller bug.
fn int(v: usize, what: &str) -> i32 {
    i32::try_from(v).unwrap_or_else(|_| panic!("{what} = {v} exceeds the kernels' 32-bit sizes"))
}

/// A grid-stride launch over `n` elements: enough blocks to fill any current GPU several
/// times over; the kernels' loops cover the rest.
fn elementwise(n: usize) -> LaunchConfig {
    let threads = EVO_ELEMENTWISE_THREADS as usize;
    LaunchConfig {
        grid_dim: (n.div_ceil(threads).min(4096) as u32, 1, 1),
        block_dim: (threads as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block of `EVO_ROW_THREADS` per row.
fn per_row(n_rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n_rows as u32, 1, 1),
        block_dim: (EVO_ROW_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl CudaDevice {
    /// Opens GPU `ordinal` and loads every kernel family (PTX built by build.rs, else NVRTC).
    pub fn new(ordinal: usize) -> Result<Self, CudaError> {
        // With dynamic loading, cudarc panics on its first driver call when libcuda is
        // missing; ask whether the library can be opened first.
        // SAFETY: only tries to open the shared library.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(CudaError::NoDriver);
        }
        let ctx = CudaContext::new(ordinal)?;
        let stream = ctx.default_stream();
        let norm = module::load(&ctx, "norm_rope")?;
        let attn = module::load(&ctx, "attention")?;
        let kl = module::load(&ctx, "kl")?;
        let mm = module::load(&ctx, "dequant_matmul")?;
        let attention = attn.load_function("attention_causal_gqa_f32")?;
        attention.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            attention_smem_bytes(EVO_ATTN_MAX_HEAD_DIM as usize) as i32,
        )?;
        let k = Kernels {
            rms_norm: norm.load_function("rms_norm_f32")?,
            rope: norm.load_function("rope_rotate_half_f32")?,
            silu_mul: norm.load_function("silu_mul_f32")?,
            add_assign: norm.load_function("add_assign_f32")?,
            add_bias: norm.load_function("add_bias_f32")?,
            attention,
            nll_rows: kl.load_function("nll_rows_f32")?,
            kl_rows: kl.load_function("kl_rows_f32")?,
            matmul: [
                mm.load_function("matmul_wt_f32")?,
                mm.load_function("matmul_wt_f16")?,
                mm.load_function("matmul_wt_bf16")?,
            ],
            gemv: [
                mm.load_function("gemv_wt_f32")?,
                mm.load_function("gemv_wt_f16")?,
                mm.load_function("gemv_wt_bf16")?,
            ],
        };
        Ok(CudaDevice { ctx, stream, k })
    }

    /// The GPU's name, as the driver reports it.
    pub fn name(&self) -> Result<String, CudaError> {
        Ok(self.ctx.name()?)
    }

    /// The stream every op is queued on: upload with `clone_htod`, download with
    /// `memcpy_dtoh`, and `synchronize` before reading a clock.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Copies a weight to the GPU in its stored dtype (a mapped weight is read straight from
    /// the map).
    pub fn upload_weight(&self, w: &Weight) -> Result<DeviceWeight, CudaError> {
        let Some(view) = w.dense_view() else {
            // Compressed kinds are decoded on the host and uploaded as f32 (correct, simple).
            let f = w.to_f32_vec();
            return Ok(DeviceWeight {
                rows: w.rows,
                cols: w.cols,
                data: WeightData::F32(self.stream.clone_htod(&f)?),
            });
        };
        let data = match view {
            WeightView::F32(s) => WeightData::F32(self.stream.clone_htod(s)?),
            WeightView::F16(s) => WeightData::F16(self.stream.clone_htod(s)?),
            WeightView::BF16(s) => WeightData::BF16(self.stream.clone_htod(s)?),
        };
        Ok(DeviceWeight {
            rows: w.rows,
            cols: w.cols,
            data,
        })
    }

    /// Copies a RoPE table to the GPU, once per model rather than once per call.
    pub fn upload_rope(&self, t: &RopeTable) -> Result<DeviceRope, CudaError> {
        Ok(DeviceRope {
            half_dim: t.head_dim / 2,
            max_positions: t.max_positions,
            cos: self.stream.clone_htod(&t.cos)?,
            sin: self.stream.clone_htod(&t.sin)?,
        })
    }

    /// `out[m, w.rows] = x[m, w.cols] · Wᵀ`: the GEMV kernel for one token, the tiled one
    /// otherwise.
    pub fn matmul_wt_dev(
        &self,
        x: &CudaSlice<f32>,
        w: &DeviceWeight,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        let (k, n) = (w.cols, w.rows);
        let m = x.len() / k;
        assert_eq!(x.len(), m * k, "matmul_wt: x is not [m, {k}]");
        assert_eq!(out.len(), m * n, "matmul_wt: out is not [{m}, {n}]");
        if m * n == 0 {
            return Ok(());
        }
        let p = MatmulParams {
            m: int(m, "matmul m"),
            n: int(n, "matmul n"),
            k: int(k, "matmul k"),
        };
        let which = match w.data {
            WeightData::F32(_) => 0,
            WeightData::F16(_) => 1,
            WeightData::BF16(_) => 2,
        };
        let (f, cfg) = if m == 1 {
            let cfg = LaunchConfig {
                grid_dim: (n.div_ceil(EVO_GEMV_WARPS as usize) as u32, 1, 1),
                block_dim: (32 * EVO_GEMV_WARPS, 1, 1),
                shared_mem_bytes: 0,
            };
            (&self.k.gemv[which], cfg)
        } else {
            let cfg = LaunchConfig {
                grid_dim: (
                    n.div_ceil(EVO_MM_TILE_N as usize) as u32,
                    m.div_ceil(EVO_MM_TILE_M as usize) as u32,
                    1,
                ),
                block_dim: (EVO_MM_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            (&self.k.matmul[which], cfg)
        };
        let mut launch = self.stream.launch_builder(f);
        launch.arg(out).arg(x);
        match &w.data {
            WeightData::F32(d) => launch.arg(d),
            WeightData::F16(d) => launch.arg(d),
            WeightData::BF16(d) => launch.arg(d),
        };
        launch.arg(&p);
        // SAFETY: argument types and the sizes in `p` match the kernel (checked above).
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// Row-wise RMSNorm of `x[rows, gamma.len()]` into `out`.
    pub fn rms_norm_dev(
        &self,
        x: &CudaSlice<f32>,
        gamma: &CudaSlice<f32>,
        eps: f32,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        let d = gamma.len();
        assert!(
            d > 0 && x.len().is_multiple_of(d),
            "rms_norm: x is not [rows, {d}]"
        );
        assert_eq!(out.len(), x.len(), "rms_norm: out differs from x in length");
        let rows = x.len() / d;
        if rows == 0 {
            return Ok(());
        }
        let p = RmsNormParams {
            n_rows: int(rows, "rms_norm rows"),
            dim: int(d, "rms_norm dim"),
            eps,
        };
        let mut launch = self.stream.launch_builder(&self.k.rms_norm);
        launch.arg(out).arg(x).arg(gamma).arg(&p);
        // SAFETY: as above.
        unsafe { launch.launch(per_row(rows)) }?;
        Ok(())
    }

    /// Rotate-half RoPE in place on `x[positions.len(), n_heads, 2 * rope.half_dim]`.
    pub fn rope_dev(
        &self,
        x: &mut CudaSlice<f32>,
        n_heads: usize,
        positions: &[usize],
        rope: &DeviceRope,
    ) -> Result<(), CudaError> {
        let half = rope.half_dim;
        let n_pairs = positions.len() * n_heads * half;
        assert_eq!(
            x.len(),
            2 * n_pairs,
            "rope: x is not [tokens, {n_heads}, {}]",
            2 * half
        );
        let pos: Vec<i32> = positions
            .iter()
            .map(|&p| {
                assert!(
                    p < rope.max_positions,
                    "rope: position {p} is past the table"
                );
                p as i32
            })
            .collect();
        if n_pairs == 0 {
            return Ok(());
        }
        let pos = self.stream.clone_htod(&pos)?;
        let p = RopeParams {
            n_tok: int(positions.len(), "rope tokens"),
            n_heads: int(n_heads, "rope heads"),
            half_dim: int(half, "rope half_dim"),
        };
        let threads = EVO_ELEMENTWISE_THREADS;
        let cfg = LaunchConfig {
            grid_dim: (n_pairs.div_ceil(threads as usize) as u32, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = self.stream.launch_builder(&self.k.rope);
        launch
            .arg(x)
            .arg(&pos)
            .arg(&rope.cos)
            .arg(&rope.sin)
            .arg(&p);
        // SAFETY: as above; positions are checked against the table.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// Causal GQA attention; see [`AttnShape`]. Head dims up to `EVO_ATTN_MAX_HEAD_DIM` (256).
    pub fn attention_dev(
        &self,
        q: &CudaSlice<f32>,
        k: &CudaSlice<f32>,
        v: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        s: AttnShape,
    ) -> Result<(), CudaError> {
        let q_numel = s.batch * s.q_len * s.n_heads * s.head_dim;
        let kv_numel = s.batch * s.kv_len * s.n_kv_heads * s.head_dim;
        assert!(
            q.len() == q_numel && out.len() == q_numel,
            "attention: q/out do not match {s:?}"
        );
        assert!(
            k.len() == kv_numel && v.len() == kv_numel,
            "attention: k/v do not match {s:?}"
        );
        assert!(s.q_len <= s.kv_len, "attention: q_len > kv_len in {s:?}");
        assert!(
            s.n_kv_heads > 0 && s.n_heads.is_multiple_of(s.n_kv_heads),
            "attention: n_heads is not a multiple of n_kv_heads in {s:?}"
        );
        assert!(
            s.head_dim <= EVO_ATTN_MAX_HEAD_DIM as usize,
            "attention: head_dim {} > {EVO_ATTN_MAX_HEAD_DIM}",
            s.head_dim
        );
        if q_numel == 0 {
            return Ok(());
        }
        let p = AttnParams {
            batch: int(s.batch, "attention batch"),
            q_len: int(s.q_len, "attention q_len"),
            kv_len: int(s.kv_len, "attention kv_len"),
            n_heads: int(s.n_heads, "attention n_heads"),
            n_kv_heads: int(s.n_kv_heads, "attention n_kv_heads"),
            head_dim: int(s.head_dim, "attention head_dim"),
            scale: 1.0 / (s.head_dim as f32).sqrt(),
        };
        let cfg = LaunchConfig {
            grid_dim: (
                s.q_len.div_ceil(EVO_ATTN_Q_TILE as usize) as u32,
                s.n_heads as u32,
                s.batch as u32,
            ),
            block_dim: (32 * EVO_ATTN_Q_TILE, 1, 1),
            shared_mem_bytes: attention_smem_bytes(s.head_dim),
        };
        let mut launch = self.stream.launch_builder(&self.k.attention);
        launch.arg(out).arg(q).arg(k).arg(v).arg(&p);
        // SAFETY: as above.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// `gate = silu(gate) * up`.
    pub fn silu_mul_dev(
        &self,
        gate: &mut CudaSlice<f32>,
        up: &CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        self.binary_in_place(&self.k.silu_mul, gate, up, "silu_mul")
    }

    /// `x += y`.
    pub fn add_assign_dev(
        &self,
        x: &mut CudaSlice<f32>,
        y: &CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        self.binary_in_place(&self.k.add_assign, x, y, "add_assign")
    }

    fn binary_in_place(
        &self,
        f: &CudaFunction,
        x: &mut CudaSlice<f32>,
        y: &CudaSlice<f32>,
        op: &str,
    ) -> Result<(), CudaError> {
        assert_eq!(x.len(), y.len(), "{op}: operands differ in length");
        let n = x.len();
        if n == 0 {
            return Ok(());
        }
        let n64 = n as i64;
        let mut launch = self.stream.launch_builder(f);
        launch.arg(x).arg(y).arg(&n64);
        // SAFETY: as above.
        unsafe { launch.launch(elementwise(n)) }?;
        Ok(())
    }

    /// `x[r, :] += bias` for every row.
    pub fn add_bias_dev(
        &self,
        x: &mut CudaSlice<f32>,
        bias: &CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        let (n, d) = (x.len(), bias.len());
        assert!(
            d > 0 && n.is_multiple_of(d),
            "add_bias: x is not [rows, {d}]"
        );
        if n == 0 {
            return Ok(());
        }
        let (n64, d32) = (n as i64, int(d, "add_bias dim"));
        let mut launch = self.stream.launch_builder(&self.k.add_bias);
        launch.arg(x).arg(bias).arg(&n64).arg(&d32);
        // SAFETY: as above.
        unsafe { launch.launch(elementwise(n)) }?;
        Ok(())
    }

    /// `out[r] = -log softmax(logits[r, :])[targets[r]]`, rows of `logits.len() / targets.len()`.
    pub fn nll_rows_dev(
        &self,
        logits: &CudaSlice<f32>,
        targets: &[u32],
        out: &mut CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        let rows = targets.len();
        assert_eq!(out.len(), rows, "nll_rows: one output per target");
        if rows == 0 {
            return Ok(());
        }
        let vocab = logits.len() / rows;
        assert_eq!(
            logits.len(),
            rows * vocab,
            "nll_rows: logits is not [{rows}, vocab]"
        );
        let t: Vec<i32> = targets
            .iter()
            .map(|&t| {
                assert!(
                    (t as usize) < vocab,
                    "nll_rows: target {t} >= vocab {vocab}"
                );
                t as i32
            })
            .collect();
        let t = self.stream.clone_htod(&t)?;
        let p = VocabParams {
            n_rows: int(rows, "nll rows"),
            vocab: int(vocab, "vocab"),
        };
        let mut launch = self.stream.launch_builder(&self.k.nll_rows);
        launch.arg(out).arg(logits).arg(&t).arg(&p);
        // SAFETY: as above; targets are checked against the vocabulary.
        unsafe { launch.launch(per_row(rows)) }?;
        Ok(())
    }

    /// `out[r] = KL(softmax(p_logits[r, :]) || softmax(q_logits[r, :]))` over rows of `vocab`.
    pub fn kl_rows_dev(
        &self,
        p_logits: &CudaSlice<f32>,
        q_logits: &CudaSlice<f32>,
        vocab: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        let rows = out.len();
        assert!(
            p_logits.len() == rows * vocab && q_logits.len() == rows * vocab,
            "kl_rows: logits are not [{rows}, {vocab}]"
        );
        if rows == 0 {
            return Ok(());
        }
        let p = VocabParams {
            n_rows: int(rows, "kl rows"),
            vocab: int(vocab, "vocab"),
        };
        let mut launch = self.stream.launch_builder(&self.k.kl_rows);
        launch.arg(out).arg(p_logits).arg(q_logits).arg(&p);
        // SAFETY: as above.
        unsafe { launch.launch(per_row(rows)) }?;
        Ok(())
    }

    /// Host-slice form of [`Self::nll_rows_dev`].
    pub fn nll_rows(&self, logits: &[f32], targets: &[u32], out: &mut [f32]) {
        self.on_host("nll_rows", false, out, |d, o| {
            d.nll_rows_dev(&d.stream.clone_htod(logits)?, targets, o)
        })
    }

    /// Host-slice form of [`Self::kl_rows_dev`].
    pub fn kl_rows(&self, p_logits: &[f32], q_logits: &[f32], vocab: usize, out: &mut [f32]) {
        self.on_host("kl_rows", false, out, |d, o| {
            let p = d.stream.clone_htod(p_logits)?;
            d.kl_rows_dev(&p, &d.stream.clone_htod(q_logits)?, vocab, o)
        })
    }

    /// Runs `op` with `out` staged through a device buffer (holding a copy of `out` for an
    /// in-place op, zeros otherwise), then copies it back. Driver errors panic: see the module
    /// docs.
    fn on_host(
        &self,
        name: &str,
        in_place: bool,
        out: &mut [f32],
        op: impl FnOnce(&Self, &mut CudaSlice<f32>) -> Result<(), CudaError>,
    ) {
        let run = || -> Result<(), CudaError> {
            let mut dev_out = match in_place {
                true => self.stream.clone_htod(out)?,
                false => self.stream.alloc_zeros(out.len())?,
            };
            op(self, &mut dev_out)?;
            self.stream.memcpy_dtoh(&dev_out, out)?;
            Ok(())
        };
        run().unwrap_or_else(|e| panic!("CUDA {name}: {e}"))
    }
}

/// Host-slice ops: upload, launch, download (see the module docs).
impl Device for CudaDevice {
    fn matmul_wt(&self, x: &[f32], w: &Weight, out: &mut [f32]) {
        self.on_host("matmul_wt", false, out, |d, o| {
            let w = d.upload_weight(w)?;
            d.matmul_wt_dev(&d.stream.clone_htod(x)?, &w, o)
        })
    }
    fn rms_norm(&self, x: &[f32], gamma: &[f32], eps: f32, out: &mut [f32]) {
        self.on_host("rms_norm", false, out, |d, o| {
            let x = d.stream.clone_htod(x)?;
            d.rms_norm_dev(&x, &d.stream.clone_htod(gamma)?, eps, o)
        })
    }
    fn rope(&self, x: &mut [f32], n_heads: usize, positions: &[usize], table: &RopeTable) {
        self.on_host("rope", true, x, |d, o| {
            d.rope_dev(o, n_heads, positions, &d.upload_rope(table)?)
        })
    }
    fn attention(&self, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], shape: AttnShape) {
        self.on_host("attention", false, out, |d, o| {
            let (q, k) = (d.stream.clone_htod(q)?, d.stream.clone_htod(k)?);
            d.attention_dev(&q, &k, &d.stream.clone_htod(v)?, o, shape)
        })
    }
    fn silu_mul(&self, gate: &mut [f32], up: &[f32]) {
        self.on_host("silu_mul", true, gate, |d, o| {
            d.silu_mul_dev(o, &d.stream.clone_htod(up)?)
        })
    }
    fn add_assign(&self, x: &mut [f32], y: &[f32]) {
        self.on_host("add_assign", true, x, |d, o| {
            d.add_assign_dev(o, &d.stream.clone_htod(y)?)
        })
    }
    fn add_bias(&self, x: &mut [f32], bias: &[f32]) {
        self.on_host("add_bias", true, x, |d, o| {
            d.add_bias_dev(o, &d.stream.clone_htod(bias)?)
        })
    }
    /// On the host for now: the calibration engine calls it once per sequence and linear
    /// input, where the CPU gemm is within a small factor of the forward it follows; a cuBLAS
    /// SYRK is the natural replacement once activations stay on the GPU.
    fn gram(&self, x: &[f32], cols: usize, out: &mut [f32]) {
        crate::cpu::gram::gram(x, cols, out)
    }
}
