//! The check that apptheus's modules depend on each other one way (docs/architecture.md): the
//! module graph of apptheus/src, read from the source's `crate::` paths (and `super::`/`self::`
//! inside `http`), has no cycle. A node is a top-level module, except that `http`'s submodules
//! are nodes of their own (`http` is `http/mod.rs`). Test code (`#[cfg(test)] mod … { … }`) is
//! left out: a test may use what its module's users provide. Run by `cargo xtask test` (this
//! crate's tests); a cycle fails it, named.
//!
//! A reading of the source, not of the compiler's resolution: it knows `use` trees and paths,
//! which is how the crate names other modules (no glob imports across modules, no macros that
//! name them).
use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

/// Modules whose submodules are nodes of their own.
const EXPANDED: &[&str] = &["http"];

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The module graph of the crate whose sources are in `src`.
fn graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    walk(src, &mut files);
    // The submodules of each expanded module, from its directory's entries.
    let subs: BTreeMap<&str, BTreeSet<String>> = EXPANDED
        .iter()
        .map(|m| {
            let names = files
                .iter()
                .filter_map(|f| f.strip_prefix(src).ok())
                .filter(|rel| rel.starts_with(m) && rel.components().count() == 2)
                .filter_map(|rel| Some(rel.file_stem()?.to_str()?.to_string()))
                .filter(|stem| stem != "mod")
                .collect();
            (*m, names)
        })
        .collect();
    let mut graph = Graph::new();
    for file in &files {
        let Ok(rel) = file.strip_prefix(src) else {
            continue;
        };
        let parts: Vec<&str> = rel.iter().filter_map(|c| c.to_str()).collect();
        let top = parts[0].trim_end_matches(".rs");
        // The crate root and the binaries are not modules of the library.
        if matches!(top, "lib" | "main" | "bin") {
            continue;
        }
        let sub = subs.get(top).and_then(|s| {
            let stem = parts.get(1)?.trim_end_matches(".rs");
            s.contains(stem).then_some(stem)
        });
        let node = sub.map_or(top.to_string(), |s| format!("{top}::{s}"));
        let text = without_tests(&code_only(&std::fs::read_to_string(file).unwrap()));
        let mut deps = BTreeSet::new();
        // `crate::a::b`: a, or a::b when `a` is expanded and `b` one of its submodules.
        for path in paths_after(&text, "crate::") {
            deps.insert(name(&path, &subs));
        }
        if let Some(children) = subs.get(top) {
            // Inside an expanded module, `super::` (from a submodule), `self::` and a bare
            // `child::` (from mod.rs) name its parts.
            let local = if sub.is_some() {
                paths_after(&text, "super::")
            } else {
                let mut l = paths_after(&text, "self::");
                l.extend(children.iter().flat_map(|c| bare_paths(&text, c)));
                l
            };
            for p in local {
                let mut full = vec![top.to_string()];
                full.extend(p);
                deps.insert(name(&full, &subs));
            }
        }
        deps.remove(&node);
        graph.entry(node).or_default().extend(deps);
    }
    graph
}

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The node a path names: its first segment, with the second for an expanded module's
/// submodule.
fn name(path: &[String], subs: &BTreeMap<&str, BTreeSet<String>>) -> String {
    match (path.first(), path.get(1)) {
        (Some(top), Some(second)) if subs.get(top.as_str()).is_some_and(|s| s.contains(second)) => {
            format!("{top}::{second}")
        }
        (Some(top), _) => top.clone(),
        (None, _) => String::new(),
    }
}

/// The source without comments, and with every string and char literal emptied (their text
/// may hold braces, quotes or `crate::`).
fn code_only(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let at = |i: usize| c.get(i).copied().unwrap_or(' ');
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < c.len() {
        let rest = |k: usize| at(i + k);
        if c[i] == '/' && rest(1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if c[i] == '/' && rest(1) == '*' {
            i += 2;
            while i < c.len() && !(c[i] == '*' && at(i + 1) == '/') {
                i += 1;
            }
            i += 2;
        } else if c[i] == 'r'
            && (rest(1) == '"' || (rest(1) == '#' && "#\"".contains(rest(2))))
            && (i == 0 || !(c[i - 1].is_alphanumeric() || c[i - 1] == '_'))
        {
            // A raw string: r"…", r#"…"#, …
            let hashes = (1..).take_while(|&k| rest(k) == '#').count();
            i += 2 + hashes;
            let end: Vec<char> = std::iter::once('"')
                .chain("#".repeat(hashes).chars())
                .collect();
            while i < c.len() && !c[i..].starts_with(&end) {
                i += 1;
            }
            i += end.len();
            out.push_str("\"\"");
        } else if c[i] == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c[i] == '\'' && (rest(2) == '\'' || rest(1) == '\\') {
            // A char literal ('x', '\n', '\u{..}'); otherwise a lifetime.
            i += 1;
            while i < c.len() && c[i] != '\'' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("' '");
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// The code without its inline test modules (`#[cfg(test)]` then `mod name {`).
fn without_tests(code: &str) -> String {
    let mut out = code.to_string();
    while let Some(at) = test_module(&out) {
        let Some(open) = out[at..].find('{').map(|o| at + o) else {
            break;
        };
        let mut depth = 0;
        let mut end = out.len();
        for (k, ch) in out[open..].char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + k + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        out.replace_range(at..end, "");
    }
    out
}

/// Where the first inline test module starts.
fn test_module(code: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(k) = code[from..].find("#[cfg(test)]") {
        let at = from + k;
        let after = code[at + "#[cfg(test)]".len()..].trim_start();
        let after = after.strip_prefix("pub(super) ").unwrap_or(after);
        if let Some(decl) = after.strip_prefix("mod ")
            && decl
                .find([';', '{'])
                .is_some_and(|e| decl[e..].starts_with('{'))
        {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// Every path (its first two segments) after each `prefix` that starts a path.
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (at, _) in code.match_indices(prefix) {
        let before = code[..at].chars().next_back().unwrap_or(' ');
        if before.is_alphanumeric() || before == '_' || before == ':' {
            continue;
        }
        let mut p = Parser {
            s: &code.as_bytes()[at + prefix.len()..],
            i: 0,
        };
        p.tree(&mut Vec::new(), &mut out);
    }
    out
}

/// `child::…` paths in mod.rs that start at the child's name itself.
fn bare_paths(code: &str, child: &str) -> Vec<Vec<String>> {
    let needle = format!("{child}::");
    code.match_indices(&needle)
        .filter(|(at, _)| {
            let before = code[..*at].chars().next_back().unwrap_or(' ');
            !(before.is_alphanumeric() || before == '_' || before == ':')
        })
        .map(|_| vec![child.to_string()])
        .collect()
}

/// A `use` tree or path, read to two segments.
struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.s.get(self.i).is_some_and(u8::is_ascii_whitespace) {
            self.i += 1;
        }
    }

    fn ident(&mut self) -> Option<String> {
        self.skip_ws();
        let start = self.i;
        while self
            .s
            .get(self.i)
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
        {
            self.i += 1;
        }
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    /// A tree under `prefix`: an identifier (then `::` and more), or `{tree, tree, …}`.
    fn tree(&mut self, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        self.skip_ws();
        if self.s.get(self.i) == Some(&b'{') {
            self.i += 1;
            loop {
                self.tree(&mut prefix.clone(), out);
                self.skip_ws();
                match self.s.get(self.i) {
                    Some(b',') => self.i += 1,
                    Some(b'}') => {
                        self.i += 1;
                        return;
                    }
                    _ => return,
                }
                self.skip_ws();
                if self.s.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return;
                }
            }
        }
        let Some(id) = self.ident() else {
            if !prefix.is_empty() {
                out.push(prefix.clone());
            }
            return;
        };
        prefix.push(id);
        if self.s[self.i..].starts_with(b"::") && prefix.len() < 2 {
            self.i += 2;
            self.tree(prefix, out);
        } else {
            out.push(prefix.clone());
            // The rest of this item (`::deeper`, ` as name`) is not needed.
            while self
                .s
                .get(self.i)
                .is_some_and(|b| !matches!(b, b',' | b'}' | b';'))
            {
                if self.s[self.i] == b'{' {
                    let mut skip = Vec::new();
                    self.tree(&mut Vec::new(), &mut skip);
                } else {
                    self.i += 1;
                }
            }
        }
    }
}

/// A cycle of `graph`, if it has one, as the nodes in order with the first repeated at the end.
fn cycle(graph: &Graph) -> Option<Vec<String>> {
    // Depth-first, with the path being explored: an edge back into it closes a cycle.
    fn visit<'a>(
        node: &'a str,
        graph: &'a Graph,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| *n == node) {
            let mut c: Vec<String> = path[at..].iter().map(|n| n.to_string()).collect();
            c.push(node.to_string());
            return Some(c);
        }
        if !done.insert(node) {
            return None;
        }
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apptheus() -> Graph {
        graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../apptheus/src"))
    }

    #[test]
    fn apptheus_modules_have_no_cycle() {
        let g = apptheus();
        if let Some(c) = cycle(&g) {
            panic!(
                "apptheus/src has an import cycle: {} (see docs/architecture.md, \"Modules\")",
                c.join(" -> ")
            );
        }
    }

    /// The reading finds what the modules do import, so the check above is not vacuous.
    #[test]
    fn known_edges_are_read() {
        let g = apptheus();
        for (from, to) in [
            ("daemon", "registry"),
            ("gateway", "launcher"),
            ("registry", "launcher"),
            ("metrics", "launcher"),
            ("http", "http::handlers"),
            ("http::handlers", "http::state"),
            ("http::views", "http::reply"),
            ("http::page", "http::api"),
            ("cli", "telemetry"),
        ] {
            assert!(
                g.get(from).is_some_and(|d| d.contains(to)),
                "{from} -> {to} not found; {from} -> {:?}",
                g.get(from)
            );
        }
    }

    #[test]
    fn trees_comments_strings_and_tests() {
        let code = code_only(
            "use crate::{a::{self, X}, http::{api::Y, serve}, b};\n\
             // crate::c\n\
             let s = \"crate::d\"; let q = '\"'; let r = r#\"crate::e\"#;\n\
             fn f<'a>() { crate::f::g(); }\n\
             #[cfg(test)]\nmod tests { use crate::h; }\n",
        );
        let found: Vec<Vec<String>> = paths_after(&without_tests(&code), "crate::");
        let firsts: Vec<&str> = found.iter().map(|p| p[0].as_str()).collect();
        assert_eq!(firsts, ["a", "a", "http", "http", "b", "f"]);
        assert_eq!(found[2], ["http", "api"]);
        assert_eq!(found[3], ["http", "serve"]);
    }

    #[test]
    fn a_cycle_is_named() {
        let mut g = Graph::new();
        g.entry("a".into()).or_default().insert("b".into());
        g.entry("b".into()).or_default().insert("c".into());
        g.entry("c".into()).or_default().insert("a".into());
        assert_eq!(cycle(&g).unwrap(), ["a", "b", "c", "a"]);
        g.get_mut("c").unwrap().clear();
        assert_eq!(cycle(&g), None);
    }
}
