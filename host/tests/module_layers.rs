//! The host's modules form layers, and data flows one way through them:
//! trigger → function/pool → store data → capabilities → leaves. This test
//! reads every `crate::` path in `host/src` (code, not comments) and fails
//! on a cycle among the top-level modules or on a module that reaches up
//! into a higher layer. The layer table is the one in `host/src/lib.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Lowest first. A module may use its own layer and the ones before it.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "leaves",
        &[
            "invocation_error",
            "propagation",
            "limits",
            "stats",
            "guest_output",
            "distribution",
            "logging",
            "tenancy",
            "telemetry",
        ],
    ),
    ("capabilities", &["capabilities"]),
    ("store data", &["function_env", "store_data"]),
    ("function", &["engine", "function", "invocation"]),
    ("triggers", &["http", "messages", "job"]),
    (
        "serving",
        &["serving", "control", "admin", "config", "node_lock"],
    ),
    ("authoring", &["authoring", "manifests"]),
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

/// The top-level module a file belongs to (`capabilities/invoke.rs` →
/// `capabilities`); `None` for the crate root and the binaries.
fn module_of(file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src()).unwrap();
    let first = relative.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" | "bin" => None,
        name => Some(name.trim_end_matches(".rs").to_string()),
    }
}

/// Every top-level module named by a `crate::NAME` path in `code`,
/// including each item of a `crate::{a, b::c}` group (over several lines
/// too), skipping comments (doc links are not dependencies).
fn crate_references(code: &str) -> BTreeSet<String> {
    let code: String = code
        .lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |text: &str| -> String {
        text.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // Top-level items of the group: split at commas outside braces.
            let mut depth = 0;
            let mut item_start = 0;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        found.insert(ident(&group[item_start..i]));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.insert(ident(&group[item_start..i]));
                        item_start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(ident(after));
        }
        rest = after;
    }
    found.remove("");
    found
}

fn dependency_graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let Some(module) = module_of(&file) else {
            continue;
        };
        let code = std::fs::read_to_string(&file).unwrap();
        let uses = graph.entry(module.clone()).or_default();
        for used in crate_references(&code) {
            if used != module {
                uses.insert(used);
            }
        }
    }
    graph
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

#[test]
fn every_module_is_in_a_layer() {
    let graph = dependency_graph();
    let unplaced: Vec<&String> = graph.keys().filter(|m| layer_of(m).is_none()).collect();
    assert!(
        unplaced.is_empty(),
        "modules missing from LAYERS (and from lib.rs's layer table): {unplaced:?}"
    );
}

#[test]
fn no_module_reaches_up_into_a_higher_layer() {
    let graph = dependency_graph();
    let mut upward = Vec::new();
    for (module, uses) in &graph {
        let Some(own) = layer_of(module) else {
            continue;
        };
        for used in uses {
            if let Some(theirs) = layer_of(used)
                && theirs > own
            {
                upward.push(format!(
                    "{module} ({}) uses {used} ({})",
                    LAYERS[own].0, LAYERS[theirs].0
                ));
            }
        }
    }
    assert!(upward.is_empty(), "upward uses:\n{}", upward.join("\n"));
}

#[test]
fn the_modules_form_no_cycle() {
    let graph = dependency_graph();
    // Depth-first search with colours; a grey node seen again is a cycle.
    fn visit<'a>(
        node: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<&'a str, bool>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match state.get(node) {
            Some(true) => return None,
            Some(false) => {
                let start = path.iter().position(|n| *n == node).unwrap();
                let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            None => {}
        }
        state.insert(node, false);
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, state, path) {
                return Some(cycle);
            }
        }
        path.pop();
        state.insert(node, true);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, &graph, &mut state, &mut Vec::new()) {
            panic!("module cycle: {}", cycle.join(" → "));
        }
    }
}

#[test]
fn the_reader_sees_references_in_code_but_not_in_comments() {
    let code = "use crate::a::B;\nuse crate::{c, d::{E, F}};\nuse crate::{\n    h::I,\n    j,\n};\n/// [`crate::docs_only`]\nlet x = crate::f::g(); // crate::comment\n";
    let found: Vec<String> = crate_references(code).into_iter().collect();
    assert_eq!(found, ["a", "c", "d", "f", "h", "j"]);
}
