//! The depth-pruning search on the real model: incremental evaluation is exact, and on a
//! small restricted space the search finds the brute-force optimum on the same tokens.

mod common;

use evopress_core::data::{calibration_windows, Sampling, TokenizedFile};
use evopress_core::evaluate::Calibration;
use evopress_core::fitness::FitnessKind;
use evopress_core::{load_model, LoadedModel};
use evopress_kernels::cpu::Cpu;
use evopress_prune::{baselines, DepthEvaluator};
use evopress_prune::{DepthLayout, DropMask};
use evopress_search::{
    fitness, Evaluator, Genome, InitialSource, Search, SearchConfig, Stage, TokenBatch, TokenSlice,
};
use rand::{Rng, SeedableRng};
use std::sync::OnceLock;

fn model() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| load_model(&common::demo_model()).unwrap())
}

fn calibration(windows: usize, seq_len: usize) -> Calibration {
    let m = model();
    let path = common::asset("sotu/1790_george_washington_n.txt");
    let file = TokenizedFile::read(&path, m.tokenizer().unwrap()).unwrap();
    let files = [file];
    let samples = calibration_windows(&files, seq_len, windows, Sampling::Sequential, 0).unwrap();
    Calibration::new(&m.model, &Cpu, samples, FitnessKind::Kl, |_| {}).unwrap()
}

fn whole_batch(cal: &Calibration) -> TokenBatch {
    TokenBatch {
        slices: cal
            .sample_lens()
            .iter()
            .enumerate()
            .map(|(i, &n)| TokenSlice {
                sample: i,
                tokens: 0..n,
            })
            .collect(),
    }
}

#[test]
fn incremental_evaluation_equals_full_evaluation_bit_for_bit() {
    let m = &model().model;
    let cal = calibration(3, 48);
    let layout = DepthLayout {
        n_blocks: m.layers.len(),
        entire_block: false,
    };
    let space = layout.space(4, None).unwrap();
    let mut incremental = DepthEvaluator::new(m, &Cpu, &cal, layout, usize::MAX);
    let mut full = DepthEvaluator::new(m, &Cpu, &cal, layout, 0);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let batch = whole_batch(&cal);
    let parent = evopress_search::init::random_start(&space, &mut rng).unwrap();
    incremental.begin_stage(&batch, &parent).unwrap();
    full.begin_stage(&batch, &parent).unwrap();
    for _ in 0..6 {
        // A child differing from the parent in a random late block: the incremental path
        // starts there.
        let child = swap_two_attention_drops(layout, &parent, &mut rng);
        let a = fitness(&mut incremental, &child, &batch).unwrap();
        let b = fitness(&mut full, &child, &batch).unwrap();
        assert_eq!(a.to_bits(), b.to_bits(), "incremental {a} vs full {b}");
    }
    assert!(
        incremental.blocks_run < full.blocks_run,
        "the cache saved no work"
    );
}

/// A child of `parent` with two attention drops swapped (or `parent` itself when both
/// picked blocks drop alike).
fn swap_two_attention_drops(layout: DepthLayout, parent: &Genome, rng: &mut impl Rng) -> Genome {
    let mut drops: DropMask = layout.drops(parent);
    let (i, j) = (rng.gen_range(0..30), rng.gen_range(0..30));
    if drops.attn[i] != drops.attn[j] {
        drops.attn.swap(i, j);
    }
    layout.genome(&drops).unwrap()
}

#[test]
fn boundaries_and_parent_scores_kept_across_stages_change_no_bit() {
    let m = &model().model;
    let cal = calibration(4, 48);
    let layout = DepthLayout {
        n_blocks: m.layers.len(),
        entire_block: false,
    };
    let space = layout.space(4, None).unwrap();
    let mut kept = DepthEvaluator::new(m, &Cpu, &cal, layout, usize::MAX);
    let mut fresh_blocks = 0;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
    let mut parent = evopress_search::init::random_start(&space, &mut rng).unwrap();
    for stage in 0..8 {
        // The parent changes every other stage; two of the four samples, the second one
        // sometimes cut short, so that slices recur both whole and truncated.
        if stage % 2 == 1 {
            parent = swap_two_attention_drops(layout, &parent, &mut rng);
        }
        let a = rng.gen_range(0..4);
        let b = (a + rng.gen_range(1..4)) % 4;
        let cut = if rng.gen_bool(0.5) { 24 } else { 48 };
        let batch = TokenBatch {
            slices: vec![
                TokenSlice {
                    sample: a,
                    tokens: 0..48,
                },
                TokenSlice {
                    sample: b,
                    tokens: 0..cut,
                },
            ],
        };
        let mut fresh = DepthEvaluator::new(m, &Cpu, &cal, layout, usize::MAX);
        kept.begin_stage(&batch, &parent).unwrap();
        fresh.begin_stage(&batch, &parent).unwrap();
        fresh_blocks += fresh.cache_blocks_run;
        let child = swap_two_attention_drops(layout, &parent, &mut rng);
        for genome in [&parent, &child, &parent] {
            let x = fitness(&mut kept, genome, &batch).unwrap();
            let y = fitness(&mut fresh, genome, &batch).unwrap();
            assert_eq!(
                x.to_bits(),
                y.to_bits(),
                "stage {stage}: kept {x} vs fresh {y}"
            );
        }
    }
    assert!(
        kept.cache_blocks_run < fresh_blocks,
        "nothing was reused: {} blocks against {fresh_blocks}",
        kept.cache_blocks_run
    );
}

#[test]
fn restricted_whole_block_search_finds_the_brute_force_optimum() {
    let m = &model().model;
    let cal = calibration(2, 64);
    let n = m.layers.len();
    let legal_blocks: Vec<usize> = (10..20).collect();
    let legal = evopress_prune::drop_config::whole_blocks(n, &legal_blocks);
    let (best_mask, best_f) = baselines::brute_force(
        m,
        &Cpu,
        &cal,
        &whole_batch(&cal),
        &legal_blocks,
        3,
        &|_, _| {},
    )
    .unwrap();

    let layout = DepthLayout {
        n_blocks: n,
        entire_block: true,
    };
    let space = layout.space(3, Some(&legal)).unwrap();
    let total: usize = cal.sample_lens().iter().sum();
    // One stage over every calibration token: the search sees the brute force's fitness.
    let config = SearchConfig {
        generations: 25,
        offspring: 8,
        stages: vec![Stage {
            survivors: 1,
            tokens: total,
        }],
        initially_generated: 8,
        initial_tokens: total,
        initial: vec![InitialSource::Random],
        final_tournament: false,
        ..SearchConfig::depth_defaults(n, 3)
    };
    let lens = cal.sample_lens();
    let search = Search::new(&space, &config, &lens).unwrap();
    let mut ev = DepthEvaluator::new(m, &Cpu, &cal, layout, usize::MAX);
    let mut state = search.initialize(Vec::new(), &mut ev, &mut ()).unwrap();
    search.run(&mut state, &mut ev, &mut (), 0.0).unwrap();
    assert_eq!(
        layout.drops(state.best()),
        best_mask,
        "brute-force optimum has fitness {best_f}"
    );
    assert_eq!(state.history.last().unwrap().best_fitness, best_f);
}
