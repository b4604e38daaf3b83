//! The pipeline as a graph: tables are nodes, foreign keys are edges from parent to child (the
//! workflow's dependencies), as datajoint-python's `Dependencies` reads them.

use std::collections::{BTreeSet, HashMap, VecDeque};

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::Direction;

use crate::naming::{self, Tier};

/// A table: schema and SQL name, with its primary key (hidden attributes included).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Table {
    pub schema: String,
    pub name: String,
}

impl Table {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        Table { schema: schema.into(), name: name.into() }
    }

    pub fn tier(&self) -> Option<Tier> {
        Tier::of_table(&self.name)
    }

    /// `"schema"."table"`.
    pub fn qualified(&self) -> String {
        crate::sql::qualified(&self.schema, &self.name)
    }

    /// The master of a part table.
    pub fn master(&self) -> Option<Table> {
        naming::split_part(&self.name).map(|(m, _)| Table::new(self.schema.clone(), m))
    }
}

/// One foreign key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// (child attribute, parent attribute), in key order.
    pub attributes: Vec<(String, String)>,
    /// Every child attribute of the reference is in the child's primary key.
    pub primary: bool,
    /// Some attribute is renamed (`.proj(new='old')`).
    pub aliased: bool,
    /// The reference does not make up the child's whole primary key.
    pub multi: bool,
}

/// The catalog facts a graph is built from.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// Every table with its primary key.
    pub tables: Vec<(Table, Vec<String>)>,
    /// (child, parent, (child attribute, parent attribute) pairs), one entry per foreign key.
    pub foreign_keys: Vec<(Table, Table, Vec<(String, String)>)>,
}

#[derive(Debug, Default)]
pub struct Dependencies {
    graph: DiGraph<Table, Reference>,
    index: HashMap<Table, NodeIndex>,
    primary_keys: HashMap<Table, Vec<String>>,
}

/// A cycle among foreign keys (possible only with ALTER TABLE outside DataJoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cycle(pub Vec<Table>);

impl Dependencies {
    pub fn new(catalog: Catalog) -> Result<Dependencies, Cycle> {
        let mut deps = Dependencies::default();
        for (table, key) in catalog.tables {
            let node = deps.graph.add_node(table.clone());
            deps.index.insert(table.clone(), node);
            deps.primary_keys.insert(table, key);
        }
        for (child, parent, attributes) in catalog.foreign_keys {
            // A reference to or from a table outside the catalog (another schema that was not
            // loaded) still counts: add the node.
            let c = deps.node_or_add(&child);
            let p = deps.node_or_add(&parent);
            let key: BTreeSet<&str> =
                deps.primary_keys.get(&child).into_iter().flatten().map(String::as_str).collect();
            let cols: BTreeSet<&str> = attributes.iter().map(|(c, _)| c.as_str()).collect();
            let reference = Reference {
                primary: cols.is_subset(&key),
                aliased: attributes.iter().any(|(c, p)| c != p),
                multi: cols != key,
                attributes,
            };
            deps.graph.add_edge(p, c, reference);
        }
        if let Err(cycle) = petgraph::algo::toposort(&deps.graph, None) {
            return Err(Cycle(vec![deps.graph[cycle.node_id()].clone()]));
        }
        Ok(deps)
    }

    fn node_or_add(&mut self, table: &Table) -> NodeIndex {
        if let Some(n) = self.index.get(table) {
            return *n;
        }
        let n = self.graph.add_node(table.clone());
        self.index.insert(table.clone(), n);
        n
    }

    pub fn contains(&self, table: &Table) -> bool {
        self.index.contains_key(table)
    }

    pub fn primary_key(&self, table: &Table) -> Option<&[String]> {
        self.primary_keys.get(table).map(Vec::as_slice)
    }

    pub fn tables(&self) -> impl Iterator<Item = &Table> {
        self.graph.node_weights()
    }

    fn neighbors(&self, table: &Table, direction: Direction) -> Vec<(&Table, &Reference)> {
        let Some(&n) = self.index.get(table) else { return Vec::new() };
        let mut out: Vec<(&Table, &Reference)> = self
            .graph
            .edges_directed(n, direction)
            .map(|e| {
                let other = if direction == Direction::Incoming {
                    petgraph::visit::EdgeRef::source(&e)
                } else {
                    petgraph::visit::EdgeRef::target(&e)
                };
                (&self.graph[other], e.weight())
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(b.0).then_with(|| a.1.attributes.cmp(&b.1.attributes)));
        out
    }

    /// The tables `table` references, with the references (one per foreign key).
    pub fn parents(&self, table: &Table) -> Vec<(&Table, &Reference)> {
        self.neighbors(table, Direction::Incoming)
    }

    /// The tables that reference `table`.
    pub fn children(&self, table: &Table) -> Vec<(&Table, &Reference)> {
        self.neighbors(table, Direction::Outgoing)
    }

    /// The part tables of a master (its children named `master__part`).
    pub fn parts(&self, master: &Table) -> Vec<&Table> {
        self.children(master)
            .into_iter()
            .map(|(c, _)| c)
            .filter(|c| c.master().as_ref() == Some(master))
            .collect()
    }

    fn closure(&self, table: &Table, direction: Direction) -> Vec<&Table> {
        let Some(&start) = self.index.get(table) else { return Vec::new() };
        let mut seen = vec![false; self.graph.node_count()];
        let mut queue = VecDeque::from([start]);
        let mut found = BTreeSet::new();
        seen[start.index()] = true;
        while let Some(n) = queue.pop_front() {
            for next in self.graph.neighbors_directed(n, direction) {
                if !seen[next.index()] {
                    seen[next.index()] = true;
                    found.insert(next);
                    queue.push_back(next);
                }
            }
        }
        self.topological(found.into_iter().map(|n| &self.graph[n]).collect())
    }

    /// Everything upstream of `table`, in topological order.
    pub fn ancestors(&self, table: &Table) -> Vec<&Table> {
        self.closure(table, Direction::Incoming)
    }

    /// Everything downstream of `table`, in topological order.
    pub fn descendants(&self, table: &Table) -> Vec<&Table> {
        self.closure(table, Direction::Outgoing)
    }

    /// All tables in topological order: parents before children, each part right after its
    /// master, ties broken by name so the order is stable.
    pub fn topological_order(&self) -> Vec<&Table> {
        self.topological(self.graph.node_weights().collect())
    }

    /// `tables` sorted topologically: parents before children, each master followed by its parts
    /// (in their own dependency order), ties broken by name so the order is stable.
    pub fn topological<'a>(&self, tables: Vec<&'a Table>) -> Vec<&'a Table> {
        let wanted: BTreeSet<&'a Table> = tables.into_iter().collect();
        let order = self
            .grouped_order()
            .unwrap_or_else(|| self.kahn(self.graph.node_weights().collect(), |t| t.clone()));
        order.iter().filter_map(|t| wanted.get(t).copied()).collect()
    }

    /// Kahn's algorithm over `members` and the edges among them, the smallest `key` first among
    /// the ready ones.
    fn kahn<K: Ord>(&self, members: Vec<&Table>, key: impl Fn(&Table) -> K) -> Vec<Table> {
        let set: BTreeSet<&Table> = members.iter().copied().collect();
        let mut indegree: HashMap<&Table, usize> = members.iter().map(|t| (*t, 0)).collect();
        for e in self.graph.edge_indices() {
            let (p, c) = self.graph.edge_endpoints(e).expect("edge exists");
            let (p, c) = (&self.graph[p], &self.graph[c]);
            if p != c && set.contains(p) && set.contains(c) {
                *indegree.get_mut(c).expect("member") += 1;
            }
        }
        let mut ready: BTreeSet<(K, &Table)> =
            indegree.iter().filter(|(_, d)| **d == 0).map(|(t, _)| (key(t), *t)).collect();
        let mut order = Vec::new();
        while let Some((_, t)) = ready.pop_first() {
            order.push(t.clone());
            for (child, _) in self.children(t) {
                if child != t && set.contains(child) {
                    let d = indegree.get_mut(child).expect("member");
                    *d -= 1;
                    if *d == 0 {
                        ready.insert((key(child), child));
                    }
                }
            }
        }
        order
    }

    /// Masters and their parts as units (a part's other parents count as the master's), the
    /// units in dependency order; `None` when grouping would make a cycle.
    fn grouped_order(&self) -> Option<Vec<Table>> {
        let group =
            |t: &Table| -> Table { t.master().filter(|m| self.contains(m)).unwrap_or_else(|| t.clone()) };
        let mut members: HashMap<Table, Vec<&Table>> = HashMap::new();
        for t in self.graph.node_weights() {
            members.entry(group(t)).or_default().push(t);
        }
        let mut indegree: HashMap<Table, usize> = members.keys().map(|g| (g.clone(), 0)).collect();
        let mut edges: HashMap<Table, BTreeSet<Table>> = HashMap::new();
        for e in self.graph.edge_indices() {
            let (p, c) = self.graph.edge_endpoints(e).expect("edge exists");
            let (gp, gc) = (group(&self.graph[p]), group(&self.graph[c]));
            if gp != gc && edges.entry(gp).or_default().insert(gc.clone()) {
                *indegree.get_mut(&gc).expect("group") += 1;
            }
        }
        let mut ready: BTreeSet<Table> =
            indegree.iter().filter(|(_, d)| **d == 0).map(|(g, _)| g.clone()).collect();
        let mut order = Vec::new();
        while let Some(g) = ready.pop_first() {
            for next in edges.get(&g).into_iter().flatten() {
                let d = indegree.get_mut(next).expect("group");
                *d -= 1;
                if *d == 0 {
                    ready.insert(next.clone());
                }
            }
            // Within the unit: the master first, parts in their own dependency order.
            let unit = members.remove(&g).unwrap_or_default();
            order.extend(self.kahn(unit, |t| (t != &g, t.name.clone())));
        }
        members.is_empty().then_some(order)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn t(name: &str) -> Table {
        Table::new("lab", name)
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    fn key(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    /// The example pipeline other modules' tests share.
    pub(crate) fn pipeline() -> Dependencies {
        Dependencies::new(Catalog {
            tables: vec![
                (t("subject"), key(&["subject_id"])),
                (t("#rig"), key(&["rig"])),
                (t("session"), key(&["subject_id", "session_idx"])),
                (t("__pair"), key(&["subject_id", "session_idx", "partner_id"])),
                (t("__pair__channel"), key(&["subject_id", "session_idx", "partner_id", "channel"])),
                (t("__summary"), key(&["subject_id", "session_idx"])),
            ],
            foreign_keys: vec![
                (t("session"), t("subject"), pairs(&[("subject_id", "subject_id")])),
                (t("session"), t("#rig"), pairs(&[("rig", "rig")])),
                (
                    t("__pair"),
                    t("session"),
                    pairs(&[("subject_id", "subject_id"), ("session_idx", "session_idx")]),
                ),
                (t("__pair"), t("subject"), pairs(&[("partner_id", "subject_id")])),
                (
                    t("__pair__channel"),
                    t("__pair"),
                    pairs(&[
                        ("subject_id", "subject_id"),
                        ("session_idx", "session_idx"),
                        ("partner_id", "partner_id"),
                    ]),
                ),
                (
                    t("__summary"),
                    t("session"),
                    pairs(&[("subject_id", "subject_id"), ("session_idx", "session_idx")]),
                ),
            ],
        })
        .unwrap()
    }

    fn names(tables: Vec<&Table>) -> Vec<&str> {
        tables.into_iter().map(|t| t.name.as_str()).collect()
    }

    #[test]
    fn parts_are_the_children_named_after_their_master() {
        let deps = pipeline();
        assert_eq!(names(deps.parts(&t("__pair"))), vec!["__pair__channel"]);
        assert!(deps.parts(&t("session")).is_empty(), "{:?}", names(deps.parts(&t("session"))));
    }

    #[test]
    fn edges_carry_datajoint_flags() {
        let deps = pipeline();
        let parents = deps.parents(&t("__pair"));
        assert_eq!(names(parents.iter().map(|(t, _)| *t).collect()), ["session", "subject"]);
        let (_, renamed) = parents[1];
        assert!(renamed.primary && renamed.aliased && renamed.multi);
        let (_, session) = parents[0];
        assert!(session.primary && !session.aliased && session.multi);
        let (_, rig) = deps.parents(&t("session"))[0];
        assert!(!rig.primary && !rig.aliased);
        let (_, summary) =
            deps.children(&t("session")).into_iter().find(|(c, _)| c.name == "__summary").unwrap();
        assert!(summary.primary && !summary.multi);
    }

    #[test]
    fn closures_and_order() {
        let deps = pipeline();
        assert_eq!(names(deps.ancestors(&t("__pair__channel"))), ["#rig", "subject", "session", "__pair"]);
        assert_eq!(
            names(deps.descendants(&t("subject"))),
            ["session", "__pair", "__pair__channel", "__summary"]
        );
        assert_eq!(
            names(deps.topological_order()),
            ["#rig", "subject", "session", "__pair", "__pair__channel", "__summary"]
        );
        assert!(deps.descendants(&t("__summary")).is_empty());
        assert!(deps.parents(&t("nowhere")).is_empty());
    }

    #[test]
    fn parts_follow_their_own_references_and_grouping_never_loses_tables() {
        let pair = |c: &str, p: &str| vec![(c.to_string(), p.to_string())];
        // Rec.Alpha references its sibling Rec.Zeta: Zeta must come first despite the name.
        let siblings = Dependencies::new(Catalog {
            tables: vec![
                (t("rec"), key(&["r"])),
                (t("rec__zeta"), key(&["r", "z"])),
                (t("rec__alpha"), key(&["r", "z", "a"])),
            ],
            foreign_keys: vec![
                (t("rec__zeta"), t("rec"), pair("r", "r")),
                (t("rec__alpha"), t("rec"), pair("r", "r")),
                (t("rec__alpha"), t("rec__zeta"), pair("z", "z")),
            ],
        })
        .unwrap();
        assert_eq!(names(siblings.topological_order()), ["rec", "rec__zeta", "rec__alpha"]);
        // M.P references X, which references M: as units M and X would form a cycle.
        let looped = Dependencies::new(Catalog {
            tables: vec![(t("m"), key(&["m"])), (t("x"), key(&["m", "x"])), (t("m__p"), key(&["m", "p"]))],
            foreign_keys: vec![
                (t("x"), t("m"), pair("m", "m")),
                (t("m__p"), t("m"), pair("m", "m")),
                (t("m__p"), t("x"), pair("m", "m")),
            ],
        })
        .unwrap();
        assert_eq!(names(looped.topological_order()), ["m", "x", "m__p"]);
        assert_eq!(names(looped.descendants(&t("m"))), ["x", "m__p"]);
    }

    #[test]
    fn cycles_are_refused() {
        let cyclic = Catalog {
            tables: vec![(t("a"), key(&["x"])), (t("b"), key(&["x"]))],
            foreign_keys: vec![
                (t("a"), t("b"), pairs(&[("x", "x")])),
                (t("b"), t("a"), pairs(&[("x", "x")])),
            ],
        };
        assert!(Dependencies::new(cyclic).is_err());
    }
}
