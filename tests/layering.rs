//! The layering of ARCHITECTURE.md ("Layers"), checked on the source: no import cycle spans
//! more than one top-level module of `src/`; the lower layers (`dispatch`, `store`,
//! `session`, `cluster`, `routing`, `model`, `config`) never import the HTTP side (`api`,
//! `ws`, `server`, `state`, `error`, `cli`); `config` imports nothing of the crate and
//! `model` only `config`.
//!
//! Edges are the `crate::<module>` paths of each file outside its `#[cfg(test)]` module
//! (tests may reach anywhere); `use super::…` stays inside a folder and is not an edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

fn edges() -> Graph {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = Graph::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&root).expect("under src");
            let first = rel.components().next().expect("component");
            let top = first
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_owned();
            if top == "lib" || top == "main" {
                continue; // the crate root wires everything together
            }
            let text = std::fs::read_to_string(&path).expect("read file");
            let code = text.split("#[cfg(test)]\nmod tests").next().expect("split");
            for line in code.lines() {
                let line = line.split("//").next().unwrap_or("");
                for (i, _) in line.match_indices("crate::") {
                    let name: String = line[i + 7..]
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() && name != top {
                        graph.entry(top.clone()).or_default().insert(name);
                    }
                }
            }
        }
    }
    graph
}

fn reaches(graph: &Graph, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_owned()];
    while let Some(n) = todo.pop() {
        if n == to {
            return true;
        }
        if seen.insert(n.clone()) {
            todo.extend(graph.get(&n).into_iter().flatten().cloned());
        }
    }
    false
}

#[test]
fn no_import_cycle_spans_two_modules() {
    let graph = edges();
    let mut cycles = Vec::new();
    for (from, tos) in &graph {
        for to in tos {
            if reaches(&graph, to, from) {
                cycles.push(format!("{from} -> {to} -> … -> {from}"));
            }
        }
    }
    assert!(cycles.is_empty(), "import cycles: {cycles:#?}\n{graph:#?}");
}

#[test]
fn lower_layers_never_import_higher_ones() {
    let graph = edges();
    let http = ["api", "ws", "server", "state", "cli", "fuzz", "error"];
    let lower = [
        "dispatch", "store", "session", "cluster", "model", "config", "routing",
    ];
    let mut wrong = Vec::new();
    for module in lower {
        for up in http {
            if graph.get(module).is_some_and(|t| t.contains(up)) {
                wrong.push(format!("{module} imports {up}"));
            }
        }
    }
    // The leaves: `config` owns its setting types; `model` knows nothing of the store.
    for (leaf, allowed) in [("config", &[][..]), ("model", &["config"][..])] {
        for to in graph.get(leaf).into_iter().flatten() {
            if !allowed.contains(&to.as_str()) {
                wrong.push(format!("{leaf} imports {to}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
