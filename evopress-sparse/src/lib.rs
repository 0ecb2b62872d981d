//! SparseGPT variant database and sparsity search backend (not yet implemented).
