//! Pipeline diagrams as DataJoint draws them: Manual and Lookup tables as rounded boxes, Computed
//! and Imported as ellipses, parts as small boxes, each tier in its colours; references solid
//! when they are part of the child's primary key, dashed otherwise, thin when they are not the
//! whole key, orange when they rename attributes. Output as Mermaid, Graphviz DOT, or an SVG laid
//! out here (no external program).

use layout::backends::svg::SVGWriter;
use layout::core::base::Orientation;
use layout::core::color::Color;
use layout::core::style::{LineStyleKind, StyleAttr};
use layout::std_shapes::render::get_shape_size;
use layout::std_shapes::shapes::{Arrow, Element, LineEndKind, ShapeKind};
use layout::topo::layout::VisualGraph;

use crate::dependencies::{Dependencies, Table};
use crate::naming::{self, Tier};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Mermaid,
    Dot,
    Svg,
}

impl Format {
    pub fn parse(text: &str) -> Option<Format> {
        match text.to_ascii_lowercase().as_str() {
            "mermaid" => Some(Format::Mermaid),
            "dot" => Some(Format::Dot),
            "svg" => Some(Format::Svg),
            _ => None,
        }
    }
}

/// How one tier is drawn (datajoint-python's light theme).
struct Look {
    class: &'static str,
    ellipse: bool,
    font_size: usize,
    fill: &'static str,
    stroke: &'static str,
    text: &'static str,
}

fn look(tier: Option<Tier>) -> Look {
    let l = |class, ellipse, font_size, fill, stroke, text| Look {
        class,
        ellipse,
        font_size,
        fill,
        stroke,
        text,
    };
    match tier {
        Some(Tier::Manual) => l("manual", false, 12, "#E8F0E9", "#3E7A52", "#28513A"),
        Some(Tier::Lookup) => l("lookup", false, 12, "#F0F0F1", "#808285", "#5A5C5F"),
        Some(Tier::Computed) => l("computed", true, 12, "#FFEDE5", "#FF5113", "#B23200"),
        Some(Tier::Imported) => l("imported", true, 12, "#E0F4FC", "#00A0DF", "#00537A"),
        Some(Tier::Part) => l("part", false, 10, "#FFFFFF", "#B9BBBE", "#55585C"),
        None => l("other", true, 10, "#FFFDE7", "#C9BC5B", "#6B6420"),
    }
}

const EDGE: &str = "#171C39";
const RENAMED: &str = "#C77D3A";

struct Node {
    id: String,
    label: String,
    tier: Option<Tier>,
}

struct Edge {
    parent: usize,
    child: usize,
    primary: bool,
    renamed: bool,
    whole_key: bool,
}

/// The tables to draw and the references among them.
pub struct Diagram {
    title: String,
    nodes: Vec<Node>,
    edges: Vec<Edge>,
}

impl Diagram {
    /// `tables` in dependency order, with every reference between two of them.
    pub fn new(title: &str, deps: &Dependencies, tables: Vec<&Table>) -> Diagram {
        let tables = deps.topological(tables);
        let several_schemas = tables.iter().any(|t| t.schema != tables[0].schema);
        let nodes: Vec<Node> = tables
            .iter()
            .map(|t| {
                let class = naming::class_name_of(&t.name);
                Node {
                    id: format!("{}.{}", t.schema, t.name),
                    label: if several_schemas { format!("{}.{class}", t.schema) } else { class },
                    tier: t.tier(),
                }
            })
            .collect();
        let mut edges = Vec::new();
        for (child_index, child) in tables.iter().enumerate() {
            for (parent, reference) in deps.parents(child) {
                if let Some(parent_index) = tables.iter().position(|t| *t == parent) {
                    edges.push(Edge {
                        parent: parent_index,
                        child: child_index,
                        primary: reference.primary,
                        renamed: reference.aliased,
                        whole_key: !reference.multi,
                    });
                }
            }
        }
        Diagram { title: title.to_string(), nodes, edges }
    }

    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Mermaid => self.mermaid(),
            Format::Dot => self.dot(),
            Format::Svg => self.svg(),
        }
    }

    pub fn mermaid(&self) -> String {
        let mut out = String::from("flowchart TB\n");
        for tier in [
            Some(Tier::Manual),
            Some(Tier::Lookup),
            Some(Tier::Computed),
            Some(Tier::Imported),
            Some(Tier::Part),
            None,
        ] {
            let l = look(tier);
            out.push_str(&format!(
                "    classDef {} fill:{},stroke:{},color:{},font-size:{}px\n",
                l.class, l.fill, l.stroke, l.text, l.font_size
            ));
        }
        for (i, node) in self.nodes.iter().enumerate() {
            let l = look(node.tier);
            let label = node.label.replace('"', "#quot;");
            let shape = if l.ellipse { format!("([\"{label}\"])") } else { format!("(\"{label}\")") };
            out.push_str(&format!("    n{i}{shape}:::{}\n", l.class));
        }
        for e in &self.edges {
            let line = if e.primary { "---" } else { "-.-" };
            out.push_str(&format!("    n{} {line} n{}\n", e.parent, e.child));
        }
        for (i, e) in self.edges.iter().enumerate() {
            let colour = if e.renamed { RENAMED } else { EDGE };
            let width = if e.whole_key { 2.0 } else { 0.75 };
            out.push_str(&format!("    linkStyle {i} stroke:{colour},stroke-width:{width}px\n"));
        }
        out
    }

    pub fn dot(&self) -> String {
        let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
        let mut out = format!(
            "digraph {} {{\n    graph [rankdir=TB];\n    node [fontname=\"Helvetica\"];\n    edge [arrowhead=none];\n",
            quote(&self.title)
        );
        for node in &self.nodes {
            let l = look(node.tier);
            let (shape, style, size) = if l.ellipse {
                ("ellipse", "filled", "0.48")
            } else if node.tier == Some(Tier::Part) {
                ("box", "rounded,filled", "0.12")
            } else {
                ("box", "rounded,filled", "0.48")
            };
            out.push_str(&format!(
                "    {} [label={}, shape={shape}, style=\"{style}\", fillcolor=\"{}\", color=\"{}\", fontcolor=\"{}\", fontsize={}, height={size}];\n",
                quote(&node.id),
                quote(&node.label),
                l.fill,
                l.stroke,
                l.text,
                l.font_size
            ));
        }
        for e in &self.edges {
            let colour = if e.renamed { RENAMED.to_string() } else { format!("{EDGE}9E") };
            let (width, weight) = if e.whole_key { ("2", 3) } else { ("0.75", 1) };
            out.push_str(&format!(
                "    {} -> {} [style={}, color=\"{colour}\", penwidth={width}, weight={weight}];\n",
                quote(&self.nodes[e.parent].id),
                quote(&self.nodes[e.child].id),
                if e.primary { "solid" } else { "dashed" }
            ));
        }
        out.push_str("}\n");
        out
    }

    /// A laid-out SVG picture.
    pub fn svg(&self) -> String {
        if self.nodes.is_empty() {
            return "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"10\" height=\"10\"></svg>\n".into();
        }
        let mut graph = VisualGraph::new(Orientation::TopToBottom);
        let handles: Vec<_> = self
            .nodes
            .iter()
            .map(|node| {
                let l = look(node.tier);
                let shape = if l.ellipse {
                    ShapeKind::Circle(node.label.clone())
                } else {
                    ShapeKind::Box(node.label.clone())
                };
                // Shapes are sized across the direction of the graph, as layout-rs's own builder does.
                let dir = Orientation::TopToBottom.flip();
                let size = get_shape_size(dir, &shape, l.font_size, false);
                let style = StyleAttr::new(
                    colour(l.stroke),
                    1,
                    Some(colour(l.fill)),
                    if l.ellipse { 0 } else { 8 },
                    l.font_size,
                );
                graph.add_node(Element::create(shape, style, dir, size))
            })
            .collect();
        for e in &self.edges {
            let stroke = if e.renamed { colour(RENAMED) } else { colour(EDGE) };
            let style = StyleAttr::new(stroke, if e.whole_key { 2 } else { 1 }, None, 0, 10);
            let line = if e.primary { LineStyleKind::Normal } else { LineStyleKind::Dashed };
            let arrow = Arrow::new(LineEndKind::None, LineEndKind::None, line, "", &style, &None, &None);
            graph.add_edge(arrow, handles[e.parent], handles[e.child]);
        }
        let mut svg = SVGWriter::new();
        graph.do_it(false, false, false, &mut svg);
        svg.finalize()
    }
}

/// `#RRGGBB` as layout-rs's RGBA colour.
fn colour(hex: &str) -> Color {
    let rgb = u32::from_str_radix(hex.trim_start_matches('#'), 16).unwrap_or(0);
    Color::new((rgb << 8) | 0xFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deps() -> Dependencies {
        crate::dependencies::tests::pipeline()
    }

    #[test]
    fn mermaid_and_dot_draw_tiers_and_references() {
        let deps = deps();
        let d = Diagram::new("lab", &deps, deps.tables().collect());
        let m = d.mermaid();
        assert!(m.starts_with("flowchart TB\n"));
        assert!(m.contains("n0(\"Rig\"):::lookup"), "{m}");
        assert!(m.contains("([\"Pair\"]):::computed"));
        assert!(m.contains("(\"Pair.Channel\"):::part"));
        assert!(m.contains(" -.- "), "the nullable-free secondary rig reference is dashed: {m}");
        assert!(m.contains("stroke:#C77D3A"), "renamed reference");
        let dot = d.dot();
        assert!(dot.contains("\"lab.__pair\" [label=\"Pair\", shape=ellipse"), "{dot}");
        assert!(dot.contains("\"lab.#rig\" -> \"lab.session\" [style=dashed"));
        assert!(
            dot.contains("\"lab.subject\" -> \"lab.__pair\" [style=solid, color=\"#C77D3A\", penwidth=0.75")
        );
        assert!(dot.contains(
            "\"lab.session\" -> \"lab.__summary\" [style=solid, color=\"#171C399E\", penwidth=2, weight=3]"
        ));
    }

    #[test]
    fn svg_is_a_laid_out_picture() {
        let deps = deps();
        let svg = Diagram::new("lab", &deps, deps.tables().collect()).svg();
        assert!(svg.contains("<svg") && svg.trim_end().ends_with("</svg>"));
        for label in ["Subject", "Session", "Pair.Channel", "Rig", "Summary"] {
            assert!(svg.contains(label), "{label}");
        }
        assert!(svg.contains("<ellipse") || svg.contains("ellipse"), "computed tables are ellipses");
        assert!(
            svg.contains("#e8f0e9") || svg.contains("#E8F0E9") || svg.contains("e8f0e9"),
            "manual fill colour"
        );
        assert_eq!(Diagram::new("x", &deps, vec![]).svg().matches("<svg").count(), 1);
    }
}
