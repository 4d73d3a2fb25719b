// The migrations are embedded by `sqlx::migrate!`; without this a new or
// edited migration file would not trigger a rebuild.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
