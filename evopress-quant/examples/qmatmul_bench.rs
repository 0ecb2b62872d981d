//! Quantized matmul vs dense f32 GEMM (the `gemm` crate) on SmolLM2-135M shapes.
//!
//! `cargo run --release -p evopress-quant --example qmatmul_bench`
//!
//! For each weight shape `[rows, cols]`, bit width and token count `m` (512 = prefill of a
//! calibration window, 1 = decoding), prints the best-of-N time of `x[m, cols] · Wᵀ` and the
//! implied tokens/s for the packed matmul and for a dense f32 GEMM on the dequantized weights.

use std::time::Instant;

use evopress_kernels::{cpu::Cpu, Device};
use evopress_quant::synth::gaussian;
use evopress_quant::{rtn, QuantSpec};

/// Best wall time of `f` over enough repetitions to fill ~1 s.
fn best_time(mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::INFINITY;
    let start = Instant::now();
    let mut n = 0;
    while n < 5 || (start.elapsed().as_secs_f64() < 1.0 && n < 5000) {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        n += 1;
    }
    best
}

fn dense(x: &[f32], m: usize, w: &[f32], rows: usize, cols: usize, out: &mut [f32]) {
    // SAFETY: all three matrices are contiguous and sized for their shapes.
    unsafe {
        gemm::gemm(
            m,
            rows,
            cols,
            out.as_mut_ptr(),
            1,
            rows as isize,
            false,
            x.as_ptr(),
            1,
            cols as isize,
            w.as_ptr(),
            cols as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        )
    }
}

fn main() {
    println!("threads: {}", rayon::current_num_threads());
    println!("shape [rows x cols]  bits     m   packed ms  dense ms   packed tok/s  dense tok/s  speedup");
    for (rows, cols) in [(1536, 576), (576, 1536)] {
        let w = gaussian(rows * cols, 1);
        for bits in [2u8, 3, 4] {
            let packed = rtn(&w, rows, cols, &QuantSpec::new(bits, 128))
                .unwrap()
                .packed;
            let w_hat = packed.dequantize();
            let weight = packed.to_weight().unwrap();
            for m in [512, 1] {
                let x = gaussian(m * cols, 2);
                let mut out = vec![0f32; m * rows];
                let tq = best_time(|| Cpu.matmul_wt(&x, &weight, &mut out));
                let td = best_time(|| dense(&x, m, &w_hat, rows, cols, &mut out));
                println!(
                    "{rows:5} x {cols:<5}       {bits:4} {m:5}   {:8.3}  {:8.3}   {:12.0} {:12.0}  {:6.2}x",
                    tq * 1e3,
                    td * 1e3,
                    m as f64 / tq,
                    m as f64 / td,
                    td / tq
                );
            }
        }
    }
}
