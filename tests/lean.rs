//! The library without default features is the client alone: no clap,
//! globset or nix among its dependencies (issue 14).

use std::process::Command;

#[test]
fn the_client_library_pulls_in_no_server_or_cli_crates() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["tree", "--locked", "--offline", "--no-default-features"])
        .args(["--edges", "normal", "--prefix", "none"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8(out.stdout).unwrap();
    for heavy in ["clap", "globset", "nix ", "arc-swap", "slab"] {
        assert!(
            !tree.lines().any(|l| l.starts_with(heavy)),
            "{heavy} in the lean dependency tree:\n{tree}"
        );
    }
    assert!(tree.contains("serde_json"), "{tree}");
}
