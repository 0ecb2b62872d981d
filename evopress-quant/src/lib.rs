//! GPTQ variant database and bit-width search backend (not yet implemented).
