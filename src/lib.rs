//! The `event-backbone` binary: its command line (`cli`), one module per
//! subcommand (`commands`) and the demo. Everything they run lives in the
//! `backbone` library; the benchmarks are the `backbone-bench` binary.

pub mod cli;
pub mod commands;
pub mod demo;
