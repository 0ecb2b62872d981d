//! The evolutionary search of EvoPress (docs/search.md), which knows nothing about
//! transformers.
//!
//! A method plugs in with two things:
//! - a [`SearchSpace`]: its units, each with ordered [`Level`]s (id, cost, legality) and a
//!   budget group, built with [`SearchSpace::new`] by the method's crate;
//! - an [`Evaluator`]: the fitness of a [`Genome`] (a level index per unit) on the slices of a
//!   [`TokenBatch`] of calibration tokens, lower is better.
//!
//! Then [`Search::new`] checks the setup, [`Search::initialize`] (from the method's baseline
//! [`Seed`]s and random starts) or [`Search::resume_json`] gives a [`SearchState`],
//! [`Search::run`] evolves it, and [`Search::final_tournament`] picks the winner among the
//! last parents and the seeds on the whole calibration set. [`dp::dp_allocate`] is the
//! per-unit-error baseline over the same space.

pub mod batch;
mod checkpoint;
pub mod config;
pub mod dp;
mod error;
pub mod evolve;
mod feasibility;
pub mod init;
pub mod mutation;
pub mod space;

pub use batch::{TokenBatch, TokenSlice};
pub use config::{parse_duration, InitialSource, SearchConfig, Stage};
pub use error::{Error, Result};
pub use evolve::{
    fitness, Entrant, Evaluator, GenerationEvent, GenerationRecord, Observer, Score, Search,
    SearchState, Seed, SeedScore, StageInfo, Stop, Tournament,
};
pub use mutation::MoveCredit;
pub use space::{
    Budget, BudgetReport, ChooseK, Gate, Genome, Group, GroupReport, GroupStart, Level,
    SearchSpace, Unit,
};
