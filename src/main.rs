// mimalloc instead of glibc malloc: a third of the daemon's CPU under load
// was glibc's malloc/free (perf, `bench pipeline`), and its arenas keep
// freed memory resident.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(event_backbone::cli::main());
}
