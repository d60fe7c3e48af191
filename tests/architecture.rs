//! The shape of `src/`: the module graph read from the source text, printed
//! (`cargo test --test architecture -- --nocapture`), and checked for
//! circles at two levels:
//!
//! - between the crate's top-level modules (`use crate::seats::…`,
//!   `crate::store::…` anywhere in a file of `src/<module>`), so that
//!   dependencies run one way: http → state → registration → seats / sync
//!   → store → domain;
//! - between the files of one folder (`use super::…`, `crate::<folder>::…`),
//!   not counting a folder's `mod.rs` re-exporting its children
//!   (`pub use child::Item`), which is how a folder names its API.
//!
//! A circle fails the test and names the files that tie it.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// A source file as a module path: `src/seats/scripts.rs` → ["seats", "scripts"],
/// `src/seats/mod.rs` → ["seats"], `src/lib.rs` → [].
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src).expect("a file under src/");
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .expect("src/ is readable")
        .map(|e| e.expect("a readable entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without comments and string literals (a path in a doc comment
/// or a message is no dependency), and without `#[cfg(test)]` modules
/// (tests may reach anywhere).
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            // A quote as a character literal opens no string.
            '\'' if chars.peek() == Some(&'"') => {
                out.push(c);
                out.push(chars.next().unwrap_or('"'));
            }
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        break;
                    }
                }
                out.push_str("\"\"");
            }
            _ => out.push(c),
        }
    }
    out
}

/// Every path the code names: the `crate::`/`super::` paths of `use`
/// declarations (with their `{a, b::c}` groups expanded) and of inline
/// paths. A `pub use` is reported apart (re-exports).
fn named_paths(code: &str) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
    let mut used = Vec::new();
    let mut reexported = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before = &rest[..at];
        let is_pub = before.trim_end().ends_with("pub") || before.trim_end().ends_with(')');
        let word_start = before
            .chars()
            .last()
            .is_none_or(|c| !c.is_alphanumeric() && c != '_');
        let after = &rest[at + 4..];
        let Some(end) = after.find(';') else { break };
        if word_start {
            let mut paths = Vec::new();
            expand(&after[..end], Vec::new(), &mut paths);
            if is_pub {
                reexported.extend(paths);
            } else {
                used.extend(paths);
            }
        }
        rest = &after[end..];
    }
    for root in ["crate::", "super::"] {
        let mut rest = code;
        while let Some(at) = rest.find(root) {
            let tail = &rest[at..];
            let path: String = tail
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            used.push(
                path.split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
            );
            rest = &tail[root.len()..];
        }
    }
    (used, reexported)
}

/// Expands a use tree (`a::{b, c::{d, e}}`) into its paths.
fn expand(tree: &str, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head: Vec<String> = tree[..open]
            .split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let mut depth = 0;
        let mut start = 0;
        let mut prefix = prefix;
        prefix.extend(head);
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&inner[start..i], prefix.clone(), out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&inner[start..], prefix, out);
    } else if !tree.is_empty() {
        let mut path = prefix;
        path.extend(
            tree.split(" as ")
                .next()
                .unwrap_or(tree)
                .split("::")
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        );
        out.push(path);
    }
}

/// The longest known module path that `path` starts with (the file that
/// defines what it names).
fn resolve(path: &[String], modules: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|candidate| modules.contains(candidate))
}

/// Turns `super::x` / `crate::x` in a file's code into an absolute module
/// path (`file_module` is the file's own: `super` is its parent).
fn absolute(file_module: &[String], path: &[String]) -> Option<Vec<String>> {
    match path.first().map(String::as_str) {
        Some("crate") => Some(path[1..].to_vec()),
        Some("super") => {
            let mut base = file_module.to_vec();
            let levels = path.iter().take_while(|p| *p == "super").count();
            for _ in 0..levels {
                base.pop()?;
            }
            base.extend(path[levels..].iter().cloned());
            Some(base)
        }
        _ => None,
    }
}

/// A circle in `graph`, if any (depth-first search with colours).
fn find_circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_string(), 1);
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|n| n == next).unwrap_or(0);
                    let mut circle = stack[from..].to_vec();
                    circle.push(next.clone());
                    return Some(circle);
                }
                0 => {
                    if let Some(circle) = visit(next, graph, state, stack) {
                        return Some(circle);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if state.get(node).copied().unwrap_or(0) == 0 {
            let mut stack = Vec::new();
            if let Some(circle) = visit(node, graph, &mut state, &mut stack) {
                return Some(circle);
            }
        }
    }
    None
}

struct Graphs {
    /// Top-level module → the top-level modules it names.
    modules: BTreeMap<String, BTreeSet<String>>,
    /// Folder → (file → files of the same folder it names).
    folders: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

fn graphs(src: &Path) -> Graphs {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let known: BTreeSet<Vec<String>> = files.iter().map(|f| module_path(src, f)).collect();
    let mut modules: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut folders: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for file in &files {
        let module = module_path(src, file);
        let code = code_of(&fs::read_to_string(file).expect("a readable source file"));
        let (used, _reexported) = named_paths(&code);
        let Some(top) = module.first() else { continue };
        modules.entry(top.clone()).or_default();
        for path in used {
            let Some(target) = absolute(&module, &path).and_then(|abs| resolve(&abs, &known))
            else {
                continue;
            };
            let Some(target_top) = target.first() else {
                continue;
            };
            if target_top != top {
                modules
                    .entry(top.clone())
                    .or_default()
                    .insert(target_top.clone());
            } else if module.len() >= 2 || target.len() >= 2 {
                // Within one folder: file to file.
                let name = |m: &[String]| m.join("::");
                if target != module {
                    folders
                        .entry(top.clone())
                        .or_default()
                        .entry(name(&module))
                        .or_default()
                        .insert(name(&target));
                }
            }
        }
    }
    Graphs { modules, folders }
}

#[test]
fn the_module_graph_of_src_has_no_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graphs = graphs(&src);
    println!("module graph of src/ (module -> modules it uses):");
    for (module, uses) in &graphs.modules {
        let uses: Vec<&str> = uses.iter().map(String::as_str).collect();
        println!("  {module:<13} -> {}", uses.join(", "));
    }
    if let Some(circle) = find_circle(&graphs.modules) {
        panic!(
            "the top-level modules of src/ import each other in a circle: {}",
            circle.join(" -> ")
        );
    }
    for (folder, graph) in &graphs.folders {
        if let Some(circle) = find_circle(graph) {
            panic!(
                "files of src/{folder}/ import each other in a circle: {}",
                circle.join(" -> ")
            );
        }
    }
}

#[test]
fn the_circle_check_finds_a_circle_when_there_is_one() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("http", vec!["state"]),
        ("state", vec!["seats"]),
        ("seats", vec!["http"]),
        ("store", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(str::to_string).collect()))
    .collect();
    let circle = find_circle(&graph).expect("a circle");
    assert_eq!(circle.first(), circle.last());
    assert_eq!(circle.len(), 4);
    let mut acyclic = graph.clone();
    acyclic.insert("seats".into(), BTreeSet::new());
    assert_eq!(find_circle(&acyclic), None);
}

#[test]
fn use_trees_and_inline_paths_are_read_as_dependencies() {
    let code = code_of(
        "use crate::{seats::{Redis, keys}, store as db};\n\
         // use crate::http; in a comment\n\
         pub use scripts::Reserve;\n\
         fn f() { let s = \"crate::audit\"; crate::domain::now_ms(); }\n",
    );
    let (used, reexported) = named_paths(&code);
    let used: BTreeSet<String> = used.iter().map(|p| p.join("::")).collect();
    assert!(used.contains("crate::seats::Redis"));
    assert!(used.contains("crate::seats::keys"));
    assert!(used.contains("crate::store"));
    assert!(used.contains("crate::domain::now_ms"));
    assert!(!used
        .iter()
        .any(|p| p.contains("http") || p.contains("audit")));
    assert_eq!(
        reexported,
        vec![vec!["scripts".to_string(), "Reserve".into()]]
    );
}
