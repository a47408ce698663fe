//! The crate map holds: the wire/client crate links no SQLite, sandbox or builder (a
//! client-only user and the fuzz crate get the protocol only), and the vocabulary crate
//! links no other Arca crate.

use std::process::Command;

use arca_tests::workspace_root;

/// The packages in `package`'s normal (non-dev, non-build) dependency tree.
fn normal_dependencies(package: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "tree",
            "--locked",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
            "-p",
            package,
        ])
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn the_wire_and_client_crate_links_no_sqlite_sandbox_or_builder() {
    let deps = normal_dependencies("arca-daemon-proto");
    assert!(deps.iter().any(|d| d == "arca-store-core"), "{deps:?}");
    for banned in [
        "rusqlite",
        "libsqlite3-sys",
        "arca-store-sqlite",
        "arca-sandbox",
        "arca-build",
    ] {
        assert!(
            !deps.iter().any(|d| d == banned),
            "arca-daemon-proto depends on {banned}: {deps:?}"
        );
    }
}

#[test]
fn the_fuzz_crate_links_no_sqlite() {
    let deps = normal_dependencies("arca-fuzz");
    assert!(deps.iter().any(|d| d == "arca-daemon-proto"), "{deps:?}");
    assert!(
        !deps
            .iter()
            .any(|d| d == "rusqlite" || d == "arca-store-sqlite"),
        "{deps:?}"
    );
}

#[test]
fn the_vocabulary_crate_links_no_other_arca_crate() {
    let deps = normal_dependencies("arca-store-core");
    let arca: Vec<&String> = deps
        .iter()
        .filter(|d| d.starts_with("arca-") && *d != "arca-store-core")
        .collect();
    assert!(arca.is_empty(), "arca-store-core depends on {arca:?}");
}

/// The builder substitutes through `arca-cache` but carries no HTTP server (the `serve`
/// feature is the `arca` command's), and the cache crate links no SQLite, sandbox or
/// builder: it works over any `Store`.
#[test]
fn the_builder_carries_no_cache_server_and_the_cache_crate_no_store_back_end() {
    let builder = normal_dependencies("arca-build");
    assert!(builder.iter().any(|d| d == "arca-cache"), "{builder:?}");
    for banned in ["hyper", "tokio", "hyper-util"] {
        assert!(
            !builder.iter().any(|d| d == banned),
            "arca-build links {banned}"
        );
    }
    let cache = normal_dependencies("arca-cache");
    for banned in [
        "rusqlite",
        "libsqlite3-sys",
        "arca-store-sqlite",
        "arca-sandbox",
        "arca-build",
    ] {
        assert!(
            !cache.iter().any(|d| d == banned),
            "arca-cache links {banned}"
        );
    }
}
