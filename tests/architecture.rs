//! The rooms of the crate (the top-level modules of `src/lib.rs`) import each other without
//! circles (ARCHITECTURE.md, "What each room may import").
//!
//! The check reads `src/**/*.rs`: every `crate::<room>…` path and every room named at the top of a
//! `use crate::{…}` group is an edge from the room of the file (`daemon::epoch` counts as
//! `daemon`). Comments, string literals and `#[cfg(test)]` items (and the files of
//! `#[cfg(test)] mod x;`) are skipped: a test may drive a room from above, as a dev-dependency may.
//! The edges of [`KNOWN`] are circles still open, each named with who removes it; the test fails on
//! any other circle, and on a known edge that no longer exists (so the list stays exact).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The one edge, per circle not yet broken, that goes the wrong way, with its reason. Remove an
/// entry when its edge goes; never add one to let a new circle in.
const KNOWN: &[(&str, &str, &str)] = &[];

/// Skips comments and string/char literals (replaced by spaces), keeping line structure.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'r' if matches!(b.get(i + 1), Some(b'"') | Some(b'#'))
                && (i == 0 || b[i - 1] == b'b' || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) =>
            {
                let mut j = i + 1;
                let mut hashes = 0;
                while b.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    out.push(b[i]);
                    i += 1;
                    continue;
                }
                j += 1;
                loop {
                    if j >= b.len() {
                        break;
                    }
                    if b[j] == b'"' && b[j + 1..].iter().take(hashes).filter(|c| **c == b'#').count() == hashes {
                        j += 1 + hashes;
                        break;
                    }
                    j += 1;
                }
                out.push(b' ');
                i = j;
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                out.push(b' ');
            }
            b'\'' => {
                // A char literal ('x', '\n', '\u{..}'), else a lifetime.
                let next = src[i + 1..].chars().next();
                if next == Some('\\') {
                    let mut j = i + 2;
                    while j < b.len() && b[j] != b'\'' {
                        j += 1;
                    }
                    i = j + 1;
                    out.push(b' ');
                } else if let Some(n) = next.map(char::len_utf8).filter(|n| b.get(i + 1 + n) == Some(&b'\'')) {
                    i += n + 2;
                    out.push(b' ');
                } else {
                    out.push(b'\'');
                    i += 1;
                }
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes every item annotated `#[cfg(test)]` (a `…;` item or a `{…}` block).
fn without_test_items(code: &str) -> String {
    const ATTR: &str = "#[cfg(test)]";
    let mut out = String::new();
    let mut rest = code;
    while let Some(at) = rest.find(ATTR) {
        out.push_str(&rest[..at]);
        let after = &rest[at + ATTR.len()..];
        let Some(end) = after.find([';', '{']) else {
            rest = "";
            break;
        };
        if after.as_bytes()[end] == b';' {
            rest = &after[end + 1..];
            continue;
        }
        let mut depth = 0usize;
        let mut stop = after.len();
        for (i, c) in after[end..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        stop = end + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[stop..];
    }
    out.push_str(rest);
    out
}

/// The names `#[cfg(test)] mod name;` declares (their files are test code).
fn test_module_files(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (at, attr) in code.match_indices("#[cfg(test)]") {
        let mut rest = code[at + attr.len()..].trim_start();
        for vis in ["pub(crate) ", "pub(super) ", "pub "] {
            rest = rest.strip_prefix(vis).unwrap_or(rest).trim_start();
        }
        if let Some(decl) = rest.strip_prefix("mod ") {
            let name = ident_at(decl.trim_start());
            if decl.trim_start()[name.len()..].trim_start().starts_with(';') {
                out.push(name.to_string());
            }
        }
    }
    out
}

fn ident_at(s: &str) -> &str {
    let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
    &s[..end]
}

/// The top-level names a piece of code reaches through `crate::`.
fn crate_refs(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        if at > 0 && {
            let p = code.as_bytes()[at - 1];
            p.is_ascii_alphanumeric() || p == b'_' || p == b'$'
        } {
            continue;
        }
        let rest = code[at + 7..].trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            // Only the names at the group's top level: `beta::{x, y}` contributes `beta`.
            let (mut depth, mut name) = (0usize, String::new());
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(std::mem::take(&mut name));
                    }
                    _ if depth == 0 => name.push(c),
                    _ => {}
                }
            }
            out.insert(name);
        } else {
            out.insert(ident_at(rest).to_string());
        }
    }
    out.into_iter().map(|n| ident_at(n.trim()).to_string()).filter(|n| !n.is_empty()).collect()
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

/// Room → room → the files making that edge.
fn room_graph(src: &Path) -> (BTreeSet<String>, Graph) {
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let rooms: BTreeSet<String> = code_only(&lib)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod ").or_else(|| l.trim().strip_prefix("mod ")))
        .map(|l| l.trim_end_matches(';').trim().to_string())
        .collect();
    let mut files = Vec::new();
    rs_files(src, &mut files);
    let mut tests = BTreeSet::new();
    let mut code = BTreeMap::new();
    for f in &files {
        let c = code_only(&std::fs::read_to_string(f).unwrap());
        let stem = f.file_stem().unwrap().to_str().unwrap();
        let dir = if matches!(stem, "mod" | "lib" | "main") {
            f.parent().unwrap().to_path_buf()
        } else {
            f.with_extension("")
        };
        for m in test_module_files(&c) {
            tests.insert(dir.join(format!("{m}.rs")));
            tests.insert(dir.join(&m).join("mod.rs"));
        }
        code.insert(f.clone(), c);
    }
    let mut graph = Graph::new();
    for (f, c) in &code {
        let rel = f.strip_prefix(src).unwrap();
        let room = rel.components().next().unwrap().as_os_str().to_str().unwrap().trim_end_matches(".rs").to_string();
        if tests.contains(f) || !rooms.contains(&room) {
            continue;
        }
        for to in crate_refs(&without_test_items(c)) {
            if to != room && rooms.contains(&to) {
                graph.entry(room.clone()).or_default().entry(to).or_default().insert(rel.display().to_string());
            }
        }
    }
    (rooms, graph)
}

/// Circles as paths of rooms: for each room not yet on a reported circle, a shortest way back to
/// itself (breadth first; rooms are few).
fn circles(rooms: &BTreeSet<String>, edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    for start in rooms {
        if seen.contains(start) {
            continue;
        }
        let mut prev: BTreeMap<String, String> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start.clone()]);
        let mut found = None;
        while let Some(r) = queue.pop_front() {
            for n in edges.get(&r).into_iter().flatten() {
                if n == start {
                    found = Some(r.clone());
                    break;
                }
                if !prev.contains_key(n) {
                    prev.insert(n.clone(), r.clone());
                    queue.push_back(n.clone());
                }
            }
            if found.is_some() {
                break;
            }
        }
        if let Some(mut last) = found {
            let mut path = vec![start.clone()];
            let mut back = vec![last.clone()];
            while &last != start {
                last = prev[&last].clone();
                if &last != start {
                    back.push(last.clone());
                }
            }
            back.reverse();
            path.extend(back);
            path.push(start.clone());
            seen.extend(path.iter().cloned());
            out.push(path);
        }
    }
    out
}

// No circle between rooms other than the known ones, and every known one still exists.
#[test]
fn rooms_import_without_circles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (rooms, graph) = room_graph(&src);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, tos) in &graph {
        for to in tos.keys() {
            if !KNOWN.iter().any(|(a, b, _)| a == from && b == to) {
                edges.entry(from.clone()).or_default().insert(to.clone());
            }
        }
    }
    let found = circles(&rooms, &edges);
    let mut report = String::new();
    for c in &found {
        report.push_str(&format!("circle: {}\n", c.join(" → ")));
        for w in c.windows(2) {
            report.push_str(&format!("  {} → {}: {:?}\n", w[0], w[1], graph[&w[0]][&w[1]]));
        }
    }
    for (a, b, why) in KNOWN {
        if !graph.get(*a).is_some_and(|t| t.contains_key(*b)) {
            report.push_str(&format!("known edge {a} → {b} ({why}) is gone: remove it from KNOWN\n"));
        }
    }
    assert!(report.is_empty(), "{report}");
}

// The scanner reads `use` groups, nested paths and full paths, and skips comments, strings and
// test items.
#[test]
fn scanner_reads_references() {
    let src = r#"
use crate::{alpha, beta::{x, y::Z}, gamma::*};
use crate::delta::Thing; // crate::commented
/* crate::block */
fn f() -> &'static str { let c = '"'; let _ = crate::epsilon::g(); "crate::quoted" }
#[cfg(test)]
mod tests { use crate::zeta; }
#[cfg(test)]
mod more;
"#;
    let code = without_test_items(&code_only(src));
    let refs: Vec<String> = crate_refs(&code).into_iter().collect();
    assert_eq!(refs, ["alpha", "beta", "delta", "epsilon", "gamma"]);
    assert_eq!(test_module_files(&code_only(src)), ["more"]);
}
