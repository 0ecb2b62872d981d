//! The evolutionary search of EvoPress (SPEC 4), which knows nothing about transformers.

pub mod space;

pub use space::{
    Budget, BudgetReport, DepthLayout, DropMask, Genome, Group, GroupReport, GroupRule, GroupStart,
    Level, QuantUnit, SearchSpace, Unit,
};
