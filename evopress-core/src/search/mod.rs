//! The evolutionary search of EvoPress (docs/search.md), which knows nothing about transformers.
//!
//! A backend plugs in with two things:
//! - a [`SearchSpace`]: its units, each with ordered [`Level`]s (id, cost, legality) and a
//!   budget group, built with [`DepthLayout::space`], [`SearchSpace::sparsity`],
//!   [`SearchSpace::quantization`] or [`SearchSpace::new`];
//! - an [`Evaluator`]: the fitness of a [`Genome`] (a level index per unit) on a
//!   [`TokenBatch`] of calibration tokens, lower is better.
//!
//! Then [`Search::new`] checks the setup, [`Search::initialize`] or [`Search::resume`] gives a
//! [`SearchState`], and [`Search::run`] evolves it, checkpointing every generation.
//! [`dp::dp_allocate`] is the per-unit-error baseline over the same space.

pub mod batch;
mod checkpoint;
pub mod config;
pub mod dp;
pub mod evolve;
mod feasibility;
pub mod init;
pub mod mutation;
pub mod space;

pub use batch::{TokenBatch, TokenSlice};
pub use config::{SearchConfig, Stage};
pub use evolve::{
    Evaluator, GenerationEvent, GenerationRecord, Observer, Search, SearchState, StageInfo,
};
pub use space::{
    Budget, BudgetReport, DepthLayout, DropMask, Genome, Group, GroupReport, GroupRule, GroupStart,
    Level, QuantUnit, SearchSpace, Unit,
};
