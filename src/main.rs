fn main() {
    std::process::exit(event_backbone::cli::main());
}
