//! The server's modules depend on each other one way: no import cycle between
//! the top-level modules of `src/`, and no source file doing too many jobs.
//!
//! Reads the source as text: every `crate::` path names the top-level module it
//! reaches (names re-exported at the crate root are resolved through `lib.rs`).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`src/hub/peers.rs` -> `hub`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

/// The identifiers directly after `crate::`, expanding one level of braces.
fn crate_paths(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let bytes = text.as_bytes();
    let mut at = 0;
    while let Some(pos) = text[at..].find("crate::") {
        let start = at + pos + "crate::".len();
        at = start;
        if bytes.get(start) == Some(&b'{') {
            // `crate::{a::x, b, c::{..}}`: the names at depth 1.
            let mut depth = 0;
            let mut name = String::new();
            let mut expect_name = true;
            for &b in &bytes[start..] {
                match b {
                    b'{' => {
                        depth += 1;
                        if depth > 1 {
                            expect_name = false;
                        }
                    }
                    b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    b',' if depth == 1 => expect_name = true,
                    c if depth == 1 && expect_name && (c.is_ascii_alphanumeric() || c == b'_') => {
                        name.push(c as char)
                    }
                    _ => {
                        if !name.is_empty() {
                            found.push(std::mem::take(&mut name));
                            expect_name = false;
                        }
                    }
                }
            }
            if !name.is_empty() {
                found.push(name);
            }
        } else {
            let name: String = text[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.push(name);
            }
        }
    }
    found
}

/// Root re-exports (`pub use error::{CommandError, Error}` in lib.rs):
/// name -> module.
fn root_exports(lib: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for stmt in lib.split(';') {
        let stmt = stmt.trim();
        let Some(rest) = stmt.strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, names)) = rest.split_once("::") else {
            continue;
        };
        for name in names.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if !name.is_empty() {
                map.insert(name.to_owned(), module.to_owned());
            }
        }
    }
    map
}

fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut Vec::new(), &mut done) {
            return Some(cycle);
        }
    }
    None
}

#[test]
fn top_level_modules_import_each_other_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = fs::read_to_string(src.join("lib.rs")).unwrap();
    let exports = root_exports(&lib);
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let module = module_of(&src, file);
        if module == "lib" || module == "main" || module == "bin" {
            continue;
        }
        let text = fs::read_to_string(file).unwrap();
        // Tests may reach anywhere; comments (doc links) are no dependency.
        let code: String = text
            .split("#[cfg(test)]")
            .next()
            .unwrap_or("")
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let text = code.as_str();
        for name in crate_paths(text) {
            let target = exports.get(&name).cloned().unwrap_or(name);
            let is_module =
                src.join(&target).is_dir() || src.join(format!("{target}.rs")).is_file();
            if is_module && target != module {
                graph.entry(module.clone()).or_default().insert(target);
            }
        }
    }
    assert!(
        graph.contains_key("connection"),
        "the parser found no imports: {graph:?}"
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "import cycle between modules of src/: {}\n{graph:#?}",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn no_source_file_does_too_many_jobs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "scalers", "client/rust/src", "protocol/src"] {
        let dir = root.join(dir);
        if dir.exists() {
            rust_files(&dir, &mut files);
        }
    }
    let long: Vec<String> = files
        .iter()
        .filter(|f| {
            !f.components()
                .any(|c| c.as_os_str() == "tests" || c.as_os_str() == "target")
        })
        .filter_map(|f| {
            let text = fs::read_to_string(f).ok()?;
            let before_tests = text.split("#[cfg(test)]").next().unwrap_or("");
            let lines = before_tests.lines().count();
            (lines > 600).then(|| format!("{}: {lines} lines", f.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "files over 600 lines before their tests:\n{}",
        long.join("\n")
    );
}
