//! A measured floating-point ceiling, so kernel speeds can be reported as a fraction of what
//! this machine can actually do (turbo, AVX-512 down-clocking and noisy neighbours included).
//!
//! Each thread runs a loop of independent fused multiply-adds on full-width registers:
//! `ACCS` accumulators are enough to cover FMA latency × throughput (4 cycles × 2 ports), so
//! the loop is bound by FMA issue alone — the best any f32 kernel could hope for.

use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Wall time of one measurement (the brief from the CLI: about 200 ms).
const MEASURE: Duration = Duration::from_millis(200);
/// Loop trips per timing check.
const TRIPS: u64 = 1 << 14;
/// Independent accumulator registers per thread.
const ACCS: usize = 12;

/// Peak f32 GFLOP/s (an FMA counts as 2 flops) of `threads` threads running a pure FMA loop
/// concurrently for ~200 ms, using the widest FMA the CPU has (AVX-512, else AVX2, else a
/// scalar loop that mostly measures the compiler).
pub fn fma_ceiling_gflops(threads: usize) -> f64 {
    let threads = threads.max(1);
    let barrier = Barrier::new(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    let start = Instant::now();
                    let mut flops = 0u64;
                    while start.elapsed() < MEASURE {
                        flops += fma_burst(TRIPS);
                    }
                    flops as f64 / start.elapsed().as_secs_f64()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum::<f64>() / 1e9
    })
}

/// Runs `trips` iterations of the FMA loop and returns the flops it did.
fn fma_burst(trips: u64) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        use super::simd::{simd_level, SimdLevel};
        match simd_level() {
            // SAFETY: the level was detected from CPUID.
            SimdLevel::Avx512 => return unsafe { x86::fma_avx512(trips) },
            SimdLevel::Avx2 => return unsafe { x86::fma_avx2(trips) },
            SimdLevel::Baseline => {}
        }
    }
    let mut acc = [0f32; ACCS];
    for _ in 0..trips {
        for a in acc.iter_mut() {
            *a = std::hint::black_box(*a) * 0.999_999 + 1e-7;
        }
    }
    std::hint::black_box(acc);
    trips * ACCS as u64 * 2
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::ACCS;
    use std::arch::x86_64::*;

    /// `acc = acc · a + b` on `ACCS` zmm registers (16 lanes each).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma_avx512(trips: u64) -> u64 {
        let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        let mut acc = [_mm512_setzero_ps(); ACCS];
        for _ in 0..trips {
            for r in acc.iter_mut() {
                *r = _mm512_fmadd_ps(*r, a, b);
            }
        }
        std::hint::black_box(acc);
        trips * (ACCS * 16 * 2) as u64
    }

    /// `acc = acc · a + b` on `ACCS` ymm registers (8 lanes each).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma_avx2(trips: u64) -> u64 {
        let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        let mut acc = [_mm256_setzero_ps(); ACCS];
        for _ in 0..trips {
            for r in acc.iter_mut() {
                *r = _mm256_fmadd_ps(*r, a, b);
            }
        }
        std::hint::black_box(acc);
        trips * (ACCS * 8 * 2) as u64
    }
}
