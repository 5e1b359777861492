//! DatanetBench: end-to-end quality benchmarks that drive the real admission path, the real
//! trainer and the same attribution code the committee runs (DESIGN.md §10).

pub mod attribution;
