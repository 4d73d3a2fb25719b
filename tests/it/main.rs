//! Integration tests: one binary (faster to build and link), one module per
//! area. They run against the real Pub/Sub emulator and real databases.

mod support;

mod alerts;
mod architecture;
mod archive;
mod bench_pipeline;
mod chart;
mod chart_helm;
mod cli;
mod console;
mod console_browser;
mod db_limits;
mod deliver;
mod delivery_log;
mod demo;
mod deps;
mod dlq_bench;
mod docs_refs;
mod doctor;
mod explain;
mod faults;
mod faults_support;
mod history;
mod image;
mod integration_guide;
mod lane_runs;
mod mcp;
mod merge_e2e;
mod newcomer;
mod operator;
mod ops;
mod prometheus_live;
mod pubsub_limits;
mod real_targets;
mod retry_dlq;
mod runtime_user;
mod slow_clients;
mod snapshots;
mod store_mariadb;
mod takeover;
mod targets;
mod testbed;
