//! Build script: `sqlx::migrate!` embeds the files under `migrations/` at
//! compile time; without this a migration added to an already built tree
//! is not noticed.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
