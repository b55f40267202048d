//! CI only (`.ci/run`): a crate that depends on candle-core 0.11 with CUDA and on cuda-softmax,
//! so that `cargo check -p cuda-softmax` here proves both build in one dependency graph (cudarc
//! with candle's `dynamic-linking` and this crate's `fallback-dynamic-loading`).
