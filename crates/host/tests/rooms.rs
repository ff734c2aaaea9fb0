//! The rooms (top-level modules) of the host library and of the guest
//! agent import each other without a cycle, and the engine's floor
//! (`exec`) knows nothing of the shapes of work built on it. Read from
//! the sources as `../shared/tools/module-cycles.py` reads them: every
//! `crate::ROOM` path outside `#[cfg(test)]`, doc links included (a link
//! up is a dependency a reader follows too).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// For each room of the crate whose sources are in `src`, the rooms it
/// names.
fn edges(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src).unwrap();
            let first = relative.components().next().unwrap();
            let room = first
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string();
            if room == "lib" || room == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let text = text.split("#[cfg(test)]").next().unwrap();
            let named = edges.entry(room.clone()).or_default();
            for name in named_rooms(text) {
                if name != room {
                    named.insert(name);
                }
            }
        }
    }
    edges
}

/// The rooms `text` names: `crate::ROOM`, and `use crate::{A, B::C}`.
fn named_rooms(text: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut names = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(list) = rest.strip_prefix('{') {
            let list = &list[..list.find('}').unwrap_or(list.len())];
            for item in list.split(',') {
                let name = ident(item.trim());
                if !name.is_empty() {
                    names.insert(name);
                }
            }
        } else {
            let name = ident(rest);
            if name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_') {
                names.insert(name);
            }
        }
    }
    names
}

/// Groups of more than one room that reach each other (Tarjan's strongly
/// connected components).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, room: &'a str) {
            let n = self.index.len();
            self.index.insert(room, n);
            self.low.insert(room, n);
            self.stack.push(room);
            self.on_stack.insert(room);
            for next in self.edges.get(room).into_iter().flatten() {
                let next = next.as_str();
                if !self.index.contains_key(next) {
                    self.visit(next);
                    let low = self.low[room].min(self.low[next]);
                    self.low.insert(room, low);
                } else if self.on_stack.contains(next) {
                    let low = self.low[room].min(self.index[next]);
                    self.low.insert(room, low);
                }
            }
            if self.low[room] == self.index[room] {
                let mut group = Vec::new();
                loop {
                    let member = self.stack.pop().unwrap();
                    self.on_stack.remove(member);
                    group.push(member.to_string());
                    if member == room {
                        break;
                    }
                }
                if group.len() > 1 {
                    group.sort();
                    self.found.push(group);
                }
            }
        }
    }
    let mut walk = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for room in edges.keys() {
        if !walk.index.contains_key(room.as_str()) {
            walk.visit(room);
        }
    }
    walk.found
}

fn sources(krate: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("src")
}

#[test]
fn the_host_rooms_have_no_cycle() {
    let edges = edges(&sources("host"));
    assert!(edges.contains_key("exec"), "the sources were read");
    assert_eq!(cycles(&edges), Vec::<Vec<String>>::new());
}

#[test]
fn the_agent_rooms_have_no_cycle() {
    let edges = edges(&sources("agent"));
    assert!(edges.contains_key("serve"), "the sources were read");
    assert_eq!(cycles(&edges), Vec::<Vec<String>>::new());
}

#[test]
fn the_engines_floor_knows_nothing_of_what_stands_on_it() {
    let edges = edges(&sources("host"));
    let above = ["oneshot", "judge", "session", "prepare", "runner", "config"];
    let floor: Vec<&String> = edges["exec"]
        .iter()
        .filter(|room| above.contains(&room.as_str()))
        .collect();
    assert!(floor.is_empty(), "exec names {floor:?}");
    // The shapes of work stand beside each other or on the floor, never
    // on the facade.
    for shape in ["oneshot", "judge", "session", "prepare"] {
        assert!(
            !edges[shape].contains("runner"),
            "{shape} calls up into the facade"
        );
    }
}

#[test]
fn cycles_are_found_where_there_are_some() {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut edge = |a: &str, b: &str| {
        edges.entry(a.into()).or_default().insert(b.into());
    };
    edge("a", "b");
    edge("b", "c");
    edge("c", "a");
    edge("c", "d");
    edge("d", "e");
    assert_eq!(cycles(&edges), vec![vec!["a", "b", "c"]]);
    assert_eq!(
        named_rooms(
            "use crate::{exec::Plan, lang};\n/// [`crate::judge`]\nlet x = crate::error_chain(e);"
        ),
        ["error_chain", "exec", "judge", "lang"]
            .map(String::from)
            .into()
    );
}
