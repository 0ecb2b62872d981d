//! A/B timing of `x · Wᵀ` strategies on the forward's shapes (noisy machines: variants are
//! interleaved and medians reported). `cargo run --release --example matmul_tiles`
use evopress_kernels::cpu::matmul::matmul_wt;
use evopress_kernels::Weight;
use gemm::Parallelism;
use rayon::prelude::*;
use std::time::Instant;

#[derive(Clone, Copy)]
struct P(*mut f32);
unsafe impl Send for P {}
unsafe impl Sync for P {}
impl P {
    fn get(self) -> *mut f32 {
        self.0
    }
}

type Variant<'a> = (String, Box<dyn Fn(&mut [f32]) + 'a>);

fn tiled(x: &[f32], w: &[f32], out: &mut [f32], m: usize, n: usize, k: usize, tile: usize) {
    let o = P(out.as_mut_ptr());
    (0..n.div_ceil(tile)).into_par_iter().for_each(|t| {
        let j0 = t * tile;
        let cols = tile.min(n - j0);
        unsafe {
            gemm::gemm(
                m,
                cols,
                k,
                o.get().add(j0),
                1,
                n as isize,
                false,
                x.as_ptr(),
                1,
                k as isize,
                w.as_ptr().add(j0 * k),
                k as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            )
        }
    });
}

fn main() {
    let m = 512;
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    for &(n, k) in &[
        (1536, 576),
        (576, 1536),
        (576, 576),
        (192, 576),
        (49152, 576),
    ] {
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7) % 13) as f32 * 0.1 - 0.6)
            .collect();
        let wv: Vec<f32> = (0..n * k)
            .map(|i| ((i * 5) % 11) as f32 * 0.1 - 0.5)
            .collect();
        let w = Weight::from_f32(n, k, wv.clone());
        let mut out = vec![0f32; m * n];
        let cold: Vec<Weight> = (0..8).map(|_| Weight::from_f32(n, k, wv.clone())).collect();
        let turn = std::cell::Cell::new(0);
        let mut variants: Vec<Variant> = vec![(
            "current".into(),
            Box::new(|o: &mut [f32]| matmul_wt(&x, &w, o)),
        )];
        variants.push((
            "cold-w".into(),
            Box::new(|o: &mut [f32]| {
                turn.set((turn.get() + 1) % cold.len());
                matmul_wt(&x, &cold[turn.get()], o)
            }),
        ));
        variants.push((
            "fresh-out".into(),
            Box::new(|o: &mut [f32]| {
                let mut fresh = vec![0f32; o.len()];
                matmul_wt(&x, &w, &mut fresh);
                o[0] = fresh[0];
                o.copy_from_slice(&fresh);
            }),
        ));
        for tile in [128usize, 256, 512] {
            if tile <= n || tile == 64 {
                let (x, wv) = (&x, &wv);
                variants.push((
                    format!("ntile{tile}"),
                    Box::new(move |o: &mut [f32]| tiled(x, wv, o, m, n, k, tile)),
                ));
            }
        }
        let mut times = vec![Vec::new(); variants.len()];
        let reference = {
            matmul_wt(&x, &w, &mut out);
            out.clone()
        };
        for _ in 0..reps {
            for (i, (_, f)) in variants.iter().enumerate() {
                let t0 = Instant::now();
                f(&mut out);
                times[i].push(t0.elapsed().as_secs_f64());
            }
        }
        let flops = 2.0 * (m * n * k) as f64;
        print!("n={n} k={k}:");
        for (i, (name, f)) in variants.iter().enumerate() {
            f(&mut out);
            assert!(
                out.iter()
                    .zip(&reference)
                    .all(|(a, b)| (a - b).abs() <= 1e-3 * b.abs().max(1.0)),
                "{name}"
            );
            times[i].sort_by(f64::total_cmp);
            print!("  {name} {:.0}", flops / times[i][reps / 2] / 1e9);
        }
        println!(" GFLOP/s");
    }
}
