//! One file per subcommand, plus `input` (what a command reads from a file or stdin).

pub mod archive;
pub mod check_config;
pub mod demo;
pub mod dlq;
pub mod doctor;
pub mod events;
pub mod explain;
pub mod input;
pub mod mcp;
pub mod migrate;
pub mod provision;
pub mod publish;
pub mod records;
pub mod run;
pub mod targets;
pub mod verify;
