//! Rebuilds the store when a migration is added or changed: `sqlx::migrate!` embeds the
//! migrations directories at compile time, and cargo does not watch a directory for new files
//! unless told to.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
