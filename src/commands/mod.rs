//! One file per subcommand.

pub mod bench;
pub mod check_config;
pub mod demo;
pub mod dlq;
pub mod doctor;
pub mod events;
pub mod explain;
pub mod migrate;
pub mod provision;
pub mod publish;
pub mod run;
pub mod verify;
