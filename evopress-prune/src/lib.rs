//! Depth pruning backend: drop attention and MLP sub-blocks (see issue 3).
