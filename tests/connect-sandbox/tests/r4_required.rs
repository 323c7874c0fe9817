//! The app's repair table (`shared/src/connect/repair/r4_required.rs`) is generated from the emulator's
//! R4 table, so what the app repairs and what the emulator enforces never drift: this test regenerates
//! it and compares; `UPDATE_R4_REQUIRED=1` writes it instead.

#[test]
fn the_apps_repair_table_is_generated_from_the_r4_table() {
    // The workspace root is two folders up from this crate (tests/connect-sandbox).
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the workspace root");
    let table = root.join("shared/src/connect/repair/r4_required.rs");
    let generated = connect_sandbox::fhir::repair_table_source();
    if std::env::var_os("UPDATE_R4_REQUIRED").is_some() {
        std::fs::write(&table, generated).expect("the repair table written");
        return;
    }
    let current = std::fs::read_to_string(&table).expect("the repair table");
    assert!(
        current == generated,
        "{} is stale or edited by hand: regenerate it with \
         `UPDATE_R4_REQUIRED=1 cargo test -p connect-sandbox --test r4_required`",
        table.display()
    );
}
