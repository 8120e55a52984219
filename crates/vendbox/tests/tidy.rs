//! House rules checked on every test run: each Rust file opens with a `//!` line saying what it
//! is for, no migration that has shipped is edited (only new ones are added: their SHA-256
//! is kept in `crates/vendbox-store/migrations/SHIPPED`), and each error code the server
//! answers with has one status.

use std::path::{Path, PathBuf};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/vendbox is two levels down")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() && path.file_name().is_some_and(|n| n != "target") {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_rust_file_says_what_it_is_for() {
    let mut files = Vec::new();
    rust_files(&workspace_root().join("crates"), &mut files);
    assert!(files.len() > 10, "found only {} files; is the walk broken?", files.len());
    let offenders: Vec<_> = files
        .iter()
        .filter(|f| !std::fs::read_to_string(f).unwrap_or_default().starts_with("//! "))
        .map(|f| f.strip_prefix(workspace_root()).unwrap_or(f).display().to_string())
        .collect();
    assert!(offenders.is_empty(), "these files do not start with a `//! ` line: {offenders:#?}");
}

#[test]
fn both_stores_have_the_same_migrations() {
    let names = |flavour: &str| {
        let dir = workspace_root().join("crates/vendbox-store/migrations").join(flavour);
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("migrations directory")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let sqlite = names("sqlite");
    assert!(!sqlite.is_empty());
    assert_eq!(sqlite, names("postgres"), "every migration needs a SQLite and a PostgreSQL flavour");
}

/// Every migration file as `sha256  flavour/name`, sorted: what `migrations/SHIPPED` must list.
fn migration_digests() -> Vec<String> {
    use sha2::Digest as _;
    let root = workspace_root().join("crates/vendbox-store/migrations");
    let mut lines = Vec::new();
    for flavour in ["postgres", "sqlite"] {
        for entry in std::fs::read_dir(root.join(flavour)).expect("migrations directory").flatten() {
            let bytes = std::fs::read(entry.path()).expect("a migration file");
            let name = entry.file_name().to_string_lossy().into_owned();
            lines.push(format!("{}  {flavour}/{name}", hex::encode(sha2::Sha256::digest(&bytes))));
        }
    }
    lines.sort();
    lines
}

#[test]
fn shipped_migrations_are_never_edited() {
    // `migrations/SHIPPED` lists every migration that has shipped with its SHA-256. Adding a
    // migration adds its line; changing a listed file (or a line) fails here, as it would make
    // sqlx refuse to start on a database that applied the old text.
    let listed = std::fs::read_to_string(workspace_root().join("crates/vendbox-store/migrations/SHIPPED"))
        .expect("crates/vendbox-store/migrations/SHIPPED");
    let listed: Vec<&str> = listed.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let actual = migration_digests();
    for line in &listed {
        assert!(
            actual.iter().any(|a| a == line),
            "a shipped migration was edited or removed: {line}\nnow: {actual:#?}"
        );
    }
    for line in &actual {
        assert!(listed.contains(&line.as_str()), "a migration is not listed in migrations/SHIPPED: {line}");
    }
}

/// Every `ApiError::new(StatusCode::…, "code", …)` in the server's source, as (code, status, file).
fn coded_errors() -> Vec<(String, String, PathBuf)> {
    let mut files = Vec::new();
    rust_files(&workspace_root().join("crates/vendbox-server/src"), &mut files);
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("a source file reads");
        let mut rest = text.as_str();
        while let Some(at) = rest.find("ApiError::new(") {
            rest = &rest[at + "ApiError::new(".len()..];
            let args = rest.trim_start();
            let Some(status) = args.strip_prefix("StatusCode::") else { continue };
            let status: String = status.chars().take_while(|c| c.is_ascii_uppercase() || *c == '_').collect();
            let after = args["StatusCode::".len() + status.len()..].trim_start();
            let Some(after) = after.strip_prefix(',') else { continue };
            let Some(code) = after.trim_start().strip_prefix('"') else { continue };
            let code: String = code.chars().take_while(|c| *c != '"').collect();
            found.push((code, status, file.clone()));
        }
    }
    found
}

#[test]
fn each_error_code_has_one_status() {
    let found = coded_errors();
    assert!(
        found.len() > 20,
        "the scan found only {} coded errors; has ApiError::new changed shape?",
        found.len()
    );
    let mut statuses: std::collections::BTreeMap<&str, std::collections::BTreeSet<&str>> =
        std::collections::BTreeMap::new();
    for (code, status, _) in &found {
        statuses.entry(code).or_default().insert(status);
    }
    let split: Vec<String> = statuses
        .iter()
        .filter(|(_, s)| s.len() > 1)
        .map(|(code, _)| {
            let places: Vec<String> = found
                .iter()
                .filter(|(c, _, _)| c == code)
                .map(|(_, st, f)| format!("{st} in {}", f.display()))
                .collect();
            format!("`{code}`: {}", places.join(", "))
        })
        .collect();
    assert!(split.is_empty(), "one code answered with different statuses:\n{}", split.join("\n"));
}

/// The Ethereum library vendbox-pay is built on. Spelled in two halves so that this file, which
/// lives outside vendbox-pay, keeps the rule it checks: no Rust file but vendbox-pay's names it.
const CHAIN_LIBRARY: &str = concat!("all", "oy");

/// Every dependency of a workspace crate (normal, dev, build and target-specific), by name.
fn all_dependencies(krate: &str) -> Vec<String> {
    let manifest = std::fs::read_to_string(workspace_root().join("crates").join(krate).join("Cargo.toml"))
        .expect("the crate's manifest reads");
    let mut names = Vec::new();
    let mut in_dependencies = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            let header = line.trim_matches(|c| c == '[' || c == ']');
            in_dependencies = header.ends_with("dependencies");
            // A table per dependency: `[dependencies.name]`.
            if let Some((section, name)) = header.rsplit_once('.')
                && section.ends_with("dependencies")
            {
                names.push(name.trim().trim_matches('"').to_owned());
                in_dependencies = false;
            }
        } else if in_dependencies && let Some((name, _)) = line.split_once('=') {
            names.push(name.trim().trim_end_matches(".workspace").trim_matches('"').to_owned());
        }
    }
    names
}

/// The `[dependencies]` of a workspace crate, by name.
fn dependencies(krate: &str) -> Vec<String> {
    let manifest = std::fs::read_to_string(workspace_root().join("crates").join(krate).join("Cargo.toml"))
        .expect("the crate's manifest reads");
    let mut names = Vec::new();
    let mut in_dependencies = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_dependencies = line == "[dependencies]";
        } else if in_dependencies && let Some((name, _)) = line.split_once('=') {
            names.push(name.trim().trim_end_matches(".workspace").to_owned());
        }
    }
    names
}

#[test]
fn the_layers_keep_to_themselves() {
    // The domain, the store and the services know nothing of HTTP: every surface (HTTP, SSH,
    // and those to come) calls the same rules.
    let http = ["axum", "http", "http-body", "hyper", "hyper-util", "tower", "tower-http", "utoipa-axum"];
    for krate in ["vendbox-core", "vendbox-store", "vendbox-service"] {
        let deps = dependencies(krate);
        assert!(deps.len() > 2, "{krate}'s manifest was not read: {deps:?}");
        let web: Vec<_> = deps.iter().filter(|d| http.contains(&d.as_str())).collect();
        assert!(web.is_empty(), "{krate} depends on HTTP crates: {web:?}");
        let mut files = Vec::new();
        rust_files(&workspace_root().join("crates").join(krate).join("src"), &mut files);
        for file in files {
            let text = std::fs::read_to_string(&file).expect("a source file reads");
            for name in ["axum::", "http::", "hyper::", "StatusCode"] {
                assert!(!text.contains(name), "{} names `{name}`", file.display());
            }
        }
    }
    // boxd's protocol is vendbox-box's to speak: above it, boxes are reached through its Backend
    // and BoxdClient (and its `wire` re-export), never through boxd itself.
    let crates = std::fs::read_dir(workspace_root().join("crates")).expect("crates/ lists");
    for krate in crates.map(|e| e.expect("an entry").file_name().to_string_lossy().into_owned()) {
        let deps = dependencies(&krate);
        let allowed: &[&str] = match krate.as_str() {
            // The binary runs boxd as PID 1 of every box (`vendbox boxd`).
            "vendbox" => &["boxd"],
            "boxd" | "vendbox-box" => &["boxd", "boxd-wire"],
            _ => &[],
        };
        for dep in deps.iter().filter(|d| d.starts_with("boxd")) {
            assert!(allowed.contains(&dep.as_str()), "{krate} depends on {dep}: go through vendbox-box");
        }
    }
    // The surfaces translate shapes; the services keep the rules and the records: no route
    // reaches the store itself.
    let mut routes = Vec::new();
    rust_files(&workspace_root().join("crates/vendbox-server/src/surfaces"), &mut routes);
    assert!(routes.len() > 5, "the routes were not found: {routes:?}");
    for file in routes {
        let text = std::fs::read_to_string(&file).expect("a source file reads");
        for name in ["state.store", "vendbox_store::", "Store::"] {
            assert!(!text.contains(name), "{} names `{name}`: go through vendbox-service", file.display());
        }
    }
    // The services reach boxes through vendbox-box's Backend, the store through its trait and
    // money through vendbox-pay's PaymentMethod, never a database driver or a chain library.
    let service = dependencies("vendbox-service");
    for forbidden in ["sqlx", "vendbox-server", "vendbox-ssh", CHAIN_LIBRARY] {
        assert!(!service.iter().any(|d| d == forbidden), "vendbox-service depends on {forbidden}");
    }
    let mut files = Vec::new();
    rust_files(&workspace_root().join("crates/vendbox-service/src"), &mut files);
    for file in files {
        let text = std::fs::read_to_string(&file).expect("a source file reads");
        for name in [CHAIN_LIBRARY, "x402::", "exact::", "facilitator::"] {
            assert!(!text.contains(name), "{} names `{name}`: pay through PaymentMethod", file.display());
        }
    }
    // The HTTP side of the gate reads proofs and renders answers; it never checks a payment.
    let gate = std::fs::read_to_string(workspace_root().join("crates/vendbox-server/src/gate.rs"))
        .expect("gate.rs reads");
    for name in ["exact::", "facilitator::", CHAIN_LIBRARY, "vendbox_store", "store."] {
        assert!(
            !gate.contains(name),
            "gate.rs names `{name}`: that is the payment method's or the service's"
        );
    }
    // The Ethereum library stays inside vendbox-pay: no other crate depends on it, and no Rust
    // file elsewhere (sources, tests, benches) names it; they pay, sign and deploy with
    // vendbox-pay's `EvmAddress` and `Wallet`.
    let crates = std::fs::read_dir(workspace_root().join("crates")).expect("crates/ lists");
    let mut manifests = 0;
    for krate in crates.map(|e| e.expect("an entry").file_name().to_string_lossy().into_owned()) {
        if krate == "vendbox-pay"
            || !workspace_root().join("crates").join(&krate).join("Cargo.toml").is_file()
        {
            continue;
        }
        manifests += 1;
        let chain: Vec<_> = all_dependencies(&krate)
            .into_iter()
            .filter(|d| d == CHAIN_LIBRARY || d.starts_with(&format!("{CHAIN_LIBRARY}-")))
            .collect();
        assert!(chain.is_empty(), "{krate} depends on {chain:?}: go through vendbox-pay's types");
        let mut files = Vec::new();
        for dir in ["src", "tests", "benches"] {
            rust_files(&workspace_root().join("crates").join(&krate).join(dir), &mut files);
        }
        for file in files {
            let text = std::fs::read_to_string(&file).expect("a source file reads");
            assert!(
                !text.contains(CHAIN_LIBRARY),
                "{} names `{CHAIN_LIBRARY}`: only vendbox-pay does; use its EvmAddress and Wallet",
                file.display()
            );
        }
    }
    assert!(manifests > 5, "only {manifests} crates were walked; is the walk broken?");
}
