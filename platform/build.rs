//! Rebuild when a migration is added or changed: `sqlx::migrate!` embeds the directory's files,
//! but cargo does not watch that directory on its own.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
