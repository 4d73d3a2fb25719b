//! The SQL only the benchmarks need: scratch databases they create and drop,
//! bytes per table and index, the ceiling run's rows, counts and settles.
//! It is here, not in the library's `store`, so the binary that runs as the
//! least-privilege user carries none of it (docs/architecture.md).

pub mod bench;
pub mod ceiling;
pub mod scratch;
pub mod sizes;
