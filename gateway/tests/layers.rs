//! The gateway's layers import downward only (STYLE §15): every `crate::` path in a module names
//! the module itself or one listed before it here, nothing names `http`, and every module
//! `lib.rs` declares has its place. A cycle that comes back fails this test.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Bottom to top. Leaves first; `http` last (nothing imports it).
const LAYERS: &[&str] = &[
    "config",
    "clock",
    "systemd",
    "telemetry",
    "lavalink",
    "routeplanner",
    "supervisor",
    "sessions",
    "players",
    "stats",
    "prometheus",
    "node",
    "handover",
    "http",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a source text names through `crate::` paths, `use crate::{a, b::c}`
/// groups included.
fn crate_references(text: &str) -> BTreeSet<String> {
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level items of the group: the identifier after `{` and after each depth-0 comma.
            let mut depth = 0;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        item_start = false;
                        let name = ident(&group[i..]);
                        if !name.is_empty() && name != "self" {
                            found.insert(name);
                        }
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

#[test]
fn layers_import_downward_only() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let declared: Vec<String> =
        lib.lines().filter_map(|l| l.trim().strip_prefix("pub mod ").or_else(|| l.trim().strip_prefix("mod "))).map(|m| m.trim_end_matches(';').to_string()).collect();
    for module in &declared {
        assert!(LAYERS.contains(&module.as_str()), "module `{module}` has no place in the layer list of this test; add it where it belongs");
    }
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut violations = Vec::new();
    for file in files {
        let relative = file.strip_prefix(src()).unwrap();
        let first = relative.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        let Some(rank) = LAYERS.iter().position(|l| *l == first) else { continue };
        // Comments (doc links included) may point anywhere; code may not.
        let text: String = std::fs::read_to_string(&file).unwrap().lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
        for name in crate_references(&text) {
            if name == first {
                continue;
            }
            match LAYERS.iter().position(|l| *l == name) {
                Some(other) if other < rank => {}
                Some(_) => violations.push(format!("{} (layer `{first}`) uses `crate::{name}`, a layer above it", relative.display())),
                None => {}
            }
        }
    }
    assert!(violations.is_empty(), "imports that go up a layer:\n{}", violations.join("\n"));
}

#[test]
fn references_are_read_from_paths_and_groups() {
    let text = "use crate::config::Settings;\nuse crate::{lavalink::{self, Op}, players::Players, self as x};\nfn f() { crate::clock::unix_ms(); }";
    let found: Vec<String> = crate_references(text).into_iter().collect();
    assert_eq!(found, ["clock", "config", "lavalink", "players"]);
}
