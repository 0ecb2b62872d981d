//! One-shot baselines at the joint search's byte budget (docs/joint-search.md):
//!
//! - `uniform`: every layer at the one stored combination with the most bytes that fits;
//! - `uniform_drop`: every layer at the next costlier combination, with the sub-blocks whose
//!   single drop costs the least KL on the baselines' tokens dropped until it fits;
//!
//! (both over every combination the database stores for all layers, within the run's
//! `sparsities` and `bits`, whether or not the Pareto filter kept it in the space);
//! - `dp`: the layers' combinations minimising the sum of `rel_error` under the budget (a
//!   knapsack; `rel_error` says nothing about drops, so none);
//! - `dp_bits` and `dp_sparsity`, where the space mixes both kinds: the same knapsack over the
//!   dense combinations only (a bit width per layer) and over the highest bit width's only (a
//!   sparsity per layer). `rel_error` is measured per variant, and adding errors of different
//!   kinds can misjudge one against the other; the single-kind allocations seed the search
//!   with what a search over one kind would start from.

use crate::backend::{is_dropped, JointBackend};
use crate::levels::Combo;
use crate::space::Slot;
use evopress_core::{Baseline, BaselineContext, BaselineInfo, Candidate, Error, Result};
use evopress_prune::{drop_config, DropMask};
use evopress_search::Genome;

/// Knapsack capacity in cost quanta: costs are rounded *up* to a quantum, so a choice that
/// fits in quanta fits in bytes.
const DP_CELLS: u64 = 1 << 16;

pub fn list(b: &JointBackend) -> Vec<BaselineInfo> {
    let (fits, above) = uniform_choices(b);
    let mut out = Vec::new();
    if fits.is_some() {
        out.push(BaselineInfo {
            name: "uniform".into(),
            about: "every layer at the costliest stored combination that fits",
            cheap: true,
        });
    }
    if b.params.drops && above.is_some() {
        out.push(BaselineInfo {
            name: "uniform_drop".into(),
            about: "every layer at the next costlier combination, least-KL sub-blocks dropped \
                    until it fits",
            cheap: true,
        });
    }
    for kind in DpKind::ALL {
        if kind.offered(b) {
            out.push(BaselineInfo {
                name: kind.name().into(),
                about: kind.about(),
                cheap: true,
            });
        }
    }
    out
}

/// Which combinations a DP baseline chooses among.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DpKind {
    All,
    /// Dense combinations: a bit width per layer.
    Bits,
    /// The highest bit width's combinations: a sparsity per layer.
    Sparsity,
}

impl DpKind {
    const ALL: [DpKind; 3] = [DpKind::All, DpKind::Bits, DpKind::Sparsity];

    fn name(self) -> &'static str {
        match self {
            DpKind::All => "dp",
            DpKind::Bits => "dp_bits",
            DpKind::Sparsity => "dp_sparsity",
        }
    }

    fn about(self) -> &'static str {
        match self {
            DpKind::All => {
                "combinations minimising the sum of per-layer rel_error under the budget (DP)"
            }
            DpKind::Bits => "dense bit widths minimising the sum of per-layer rel_error (DP)",
            DpKind::Sparsity => {
                "sparsities at the highest bit width minimising the sum of per-layer rel_error \
                 (DP)"
            }
        }
    }

    fn admits(self, c: Combo, top_bits: u8) -> bool {
        match self {
            DpKind::All => true,
            DpKind::Bits => c.per_mille == 0,
            DpKind::Sparsity => c.bits == top_bits,
        }
    }

    /// `dp` always; a single-kind DP where the space mixes both kinds and every layer has a
    /// combination of that kind that the budget leaves room for.
    fn offered(self, b: &JointBackend) -> bool {
        if self == DpKind::All {
            return true;
        }
        let all: Vec<Combo> = linear_slots(b)
            .flat_map(|(_, c)| c.iter().copied())
            .collect();
        let mixed = all.iter().any(|c| c.per_mille == 0)
            && all.iter().any(|c| c.per_mille > 0)
            && all.iter().any(|c| c.bits != all[0].bits);
        let top = top_bits(b);
        let cheapest = linear_slots(b).map(|(i, combos)| {
            let levels = &b.space.units()[i].levels;
            (combos.iter().zip(levels))
                .filter(|(c, l)| l.legal && self.admits(**c, top))
                .map(|(_, l)| l.cost)
                .min()
        });
        let floor: Option<u64> = cheapest.sum();
        mixed && floor.is_some_and(|f| f <= b.target)
    }
}

/// The space units of the linear layers and their levels' combinations.
fn linear_slots(b: &JointBackend) -> impl Iterator<Item = (usize, &[Combo])> {
    (b.slots.iter().enumerate()).filter_map(|(i, slot)| match slot {
        Slot::Linear { combos, .. } => Some((i, combos.as_slice())),
        Slot::Switch { .. } => None,
    })
}

/// The highest bit width among the space's combinations.
fn top_bits(b: &JointBackend) -> u8 {
    (linear_slots(b).flat_map(|(_, combos)| combos.iter().map(|c| c.bits)))
        .max()
        .unwrap_or(0)
}

pub fn run(b: &JointBackend, name: &str, ctx: &BaselineContext) -> Result<Baseline> {
    let mut detail = toml::Table::new();
    let n = ctx.model.layers.len();
    let (fits, above) = uniform_choices(b);
    let dp_kind = (DpKind::ALL.into_iter()).find(|k| k.name() == name && k.offered(b));
    let (drops, combos) = match (name, fits, above) {
        ("uniform", Some((c, _)), _) => {
            detail.insert("combination".into(), c.to_string().into());
            (DropMask::none(n), uniform(b, c))
        }
        ("uniform_drop", _, Some((c, _))) if b.params.drops => {
            let kl = single_drop_kl(b, ctx)?;
            let mut order: Vec<usize> = (0..kl.len()).collect();
            order.sort_by(|&i, &j| kl[i].total_cmp(&kl[j]).then(i.cmp(&j)));
            let combos = uniform(b, c);
            let mut drops = DropMask::none(n);
            for &i in &order {
                if choice_bytes(b, &drops, &combos) <= b.target {
                    break;
                }
                if i < n {
                    drops.attn[i] = true;
                } else {
                    drops.mlp[i - n] = true;
                }
            }
            detail.insert("combination".into(), c.to_string().into());
            let blocks = |v: &[bool]| {
                let d = (0..v.len())
                    .filter(|&i| v[i])
                    .map(|i| toml::Value::from(i as i64));
                toml::Value::Array(d.collect())
            };
            detail.insert("dropped_attention".into(), blocks(&drops.attn));
            detail.insert("dropped_mlp".into(), blocks(&drops.mlp));
            (drops, combos)
        }
        _ if dp_kind.is_some() => {
            let (genome, error) = dp(b, dp_kind.expect("matched"))?;
            detail.insert("sum_rel_error".into(), error.into());
            b.decode(&genome)
        }
        _ => {
            let known: Vec<String> = list(b).into_iter().map(|x| x.name).collect();
            return Err(Error::Invalid(format!(
                "joint has no baseline `{name}` for this budget; it has {}",
                known.join(", ")
            )));
        }
    };
    let bytes = choice_bytes(b, &drops, &combos);
    detail.insert("bytes".into(), (bytes as i64).into());
    // A uniform choice is a genome of the space unless the Pareto filter removed its
    // combination from some layer: then it is scored held-out but does not seed the search.
    let some: Vec<Option<Combo>> = combos.iter().copied().map(Some).collect();
    let genome = b.encode(&drops, &some).ok();
    if let Some(g) = &genome {
        b.space.check_genome(g)?;
    }
    let ids: Vec<i32> = combos.iter().map(|c| c.id()).collect();
    let candidate = Candidate {
        model: b.table.assemble(ctx.model, &b.table.indices(&ids)?)?,
        plan: drop_config::plan(&drops),
    };
    Ok(Baseline {
        name: name.into(),
        candidate,
        genome,
        detail,
    })
}

/// A combination for every layer, and the layers' total bytes at it.
type Uniform = (Combo, u64);

/// A layer's knapsack options: (level index, weight in quanta, rel_error).
type Choices = Vec<(u16, usize, f64)>;

/// Every layer at `c`.
fn uniform(b: &JointBackend, c: Combo) -> Vec<Combo> {
    vec![c; b.table.units().len()]
}

/// Stored bytes of the layers of kept sub-blocks at `combos` (table order).
fn choice_bytes(b: &JointBackend, drops: &DropMask, combos: &[Combo]) -> u64 {
    (b.table.units().iter().enumerate())
        .filter(|(_, u)| !is_dropped(drops, u))
        .map(|(u, _)| {
            b.table
                .entry(u)
                .level(combos[u].id())
                .map_or(0, |l| l.bytes)
        })
        .sum()
}

/// The combinations the database stores for every layer (within the run's `sparsities` and
/// `bits`) with their total bytes (no drops): the costliest that fits the budget, and the
/// cheapest that does not.
fn uniform_choices(b: &JointBackend) -> (Option<Uniform>, Option<Uniform>) {
    let n = b.table.units().len();
    let mut common: Option<Vec<i32>> = None;
    for u in 0..n {
        let ids = b.table.level_ids(u);
        common = Some(match common {
            None => ids.to_vec(),
            Some(c) => c.into_iter().filter(|x| ids.contains(x)).collect(),
        });
    }
    let combos = (common.unwrap_or_default().into_iter())
        .filter_map(|id| Combo::from_id(id).ok())
        .filter(|&c| b.wants(c));
    let (mut fits, mut above): (Option<Uniform>, Option<Uniform>) = (None, None);
    for c in combos {
        let bytes = choice_bytes(b, &DropMask::none(b.n_blocks), &uniform(b, c));
        if bytes <= b.target {
            if fits.is_none_or(|f| bytes > f.1) {
                fits = Some((c, bytes));
            }
        } else if above.is_none_or(|a| bytes < a.1) {
            above = Some((c, bytes));
        }
    }
    (fits, above)
}

/// KL of each sub-block dropped alone (attention first, then MLP) on the baselines' batch,
/// computed once per batch.
fn single_drop_kl(b: &JointBackend, ctx: &BaselineContext) -> Result<Vec<f64>> {
    let mut memo = b.single_drop.lock().expect("not poisoned");
    if let Some((batch, kl)) = memo.as_ref() {
        if batch == ctx.batch {
            return Ok(kl.clone());
        }
    }
    let s = evopress_prune::baselines::single_drop(
        ctx.model,
        ctx.dev,
        ctx.cal,
        ctx.batch,
        true,
        ctx.progress,
    )?;
    *memo = Some((ctx.batch.clone(), s.kl.clone()));
    Ok(s.kl)
}

/// The knapsack over the layers' levels of `kind` (every sub-block kept): least `Σ rel_error`
/// with the byte total under the target. Returns the genome and its error sum.
fn dp(b: &JointBackend, kind: DpKind) -> Result<(Genome, f64)> {
    let quantum = b.target.div_ceil(DP_CELLS).max(1);
    let cap = (b.target / quantum) as usize;
    let top = top_bits(b);
    // Per layer: (space unit, [(level index, weight in quanta, rel_error)]).
    let mut items: Vec<(usize, Choices)> = Vec::new();
    for (i, slot) in b.slots.iter().enumerate() {
        if let Slot::Linear { unit, combos } = slot {
            let entry = b.table.entry(*unit);
            let levels = &b.space.units()[i].levels;
            let opts = (combos.iter().enumerate())
                .filter(|(l, c)| levels[*l].legal && kind.admits(**c, top))
                .map(|(l, c)| {
                    let e = entry.level(c.id()).map_or(f64::INFINITY, |x| x.rel_error);
                    (l as u16, levels[l].cost.div_ceil(quantum) as usize, e)
                })
                .collect();
            items.push((i, opts));
        }
    }
    // best[c]: least error of the layers so far with weights summing to at most c.
    let mut best = vec![0f64; cap + 1];
    let mut choice: Vec<Vec<u8>> = Vec::with_capacity(items.len());
    for (_, opts) in &items {
        let mut next = vec![f64::INFINITY; cap + 1];
        let mut pick = vec![u8::MAX; cap + 1];
        for (k, &(_, w, e)) in opts.iter().enumerate() {
            for c in w..=cap {
                let v = best[c - w] + e;
                if v < next[c] {
                    next[c] = v;
                    pick[c] = k as u8;
                }
            }
        }
        best = next;
        choice.push(pick);
    }
    let total = best[cap];
    if !total.is_finite() {
        return Err(Error::Invalid(
            "DP: no combination of the layers fits under the byte budget".into(),
        ));
    }
    let mut genome = b.space.base_genome();
    let mut c = cap;
    for ((i, opts), pick) in items.iter().zip(&choice).rev() {
        let k = pick[c] as usize;
        let (level, w, _) = opts[k];
        genome.0[*i] = level;
        c -= w;
    }
    Ok((genome, total))
}
