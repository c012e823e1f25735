//! A pipeline built from typed elements, with the `gst-launch-1.0` line it amounts to.
//!
//! [`Graph::make`] creates an element (its factory, name and the properties a launch line
//! would set), adds it to the pipeline and remembers how it reads in a launch line;
//! [`Graph::chain`] links elements and records the link. Secrets (URLs, keys) are set on the
//! returned objects afterwards and never recorded: [`Graph::to_launch_line`] prints the
//! pipeline without them, for the README and the logs. Links to pads that appear later
//! (`rtspsrc`, demuxers, `decodebin`) are made by the caller when they come
//! ([`Graph::delayed`] records them for the line, where `gst-launch-1.0` makes them the same
//! way). A test parses the line and compares its elements and links with the pipeline's.

use std::collections::HashSet;

use gst::prelude::*;

/// One end of a link: an element and, if it is not the one `gst_element_link` would pick, its
/// pad.
#[derive(Clone, Copy)]
pub struct End<'a> {
    pub element: &'a gst::Element,
    pub pad: Option<&'a str>,
}

/// `element` with the pad `gst_element_link` picks.
pub fn el(element: &gst::Element) -> End<'_> {
    End { element, pad: None }
}

/// `element`'s pad `pad`.
pub fn pad<'a>(element: &'a gst::Element, pad: &'a str) -> End<'a> {
    End {
        element,
        pad: Some(pad),
    }
}

/// The pipeline (or a bin) under construction and its launch line.
pub struct Graph {
    bin: gst::Bin,
    /// The declaration of each element made (`factory name=… prop=…`), in order.
    decls: Vec<(String, String)>,
    /// Links, as launch statements.
    statements: Vec<Vec<Hop>>,
}

/// One element of a launch statement: its name, and the pad it is linked by as a sink (from
/// the previous one) or as a source (to the next one), if named.
type Hop = (String, Option<String>, Option<String>);

impl Graph {
    /// A graph in `bin` (a pipeline, or a bin whose line is part of a bigger one).
    pub fn new(bin: &gst::Bin) -> Graph {
        Graph {
            bin: bin.clone(),
            decls: Vec::new(),
            statements: Vec::new(),
        }
    }

    pub fn bin(&self) -> &gst::Bin {
        &self.bin
    }

    /// Makes element `factory` named `name` with `props` (set from their string forms, as a
    /// launch line does), added to the bin.
    pub fn make(
        &mut self,
        factory: &str,
        name: &str,
        props: &[(&str, String)],
    ) -> Result<gst::Element, String> {
        let e = gst::ElementFactory::make(factory)
            .name(name)
            .build()
            .map_err(|_| format!("no {factory} element (is its GStreamer plugin installed?)"))?;
        let mut decl = format!("{factory} name={name}");
        for (k, v) in props {
            if e.find_property(k).is_none() {
                return Err(format!("{factory} has no property {k}"));
            }
            e.set_property_from_str(k, v);
            decl.push_str(&format!(" {k}={}", quote(v)));
        }
        self.bin
            .add(&e)
            .map_err(|e| format!("cannot add {name}: {e}"))?;
        self.decls.push((name.to_string(), decl));
        Ok(e)
    }

    /// A capsfilter named `name` with `caps` (a launch line writes the caps alone).
    pub fn caps(&mut self, name: &str, caps: &str) -> Result<gst::Element, String> {
        self.make("capsfilter", name, &[("caps", caps.to_string())])
    }

    /// Links `ends` one after the other and records the chain.
    pub fn chain(&mut self, ends: &[End]) -> Result<(), String> {
        for w in ends.windows(2) {
            let (a, b) = (w[0], w[1]);
            let ok = match (a.pad, b.pad) {
                (None, None) => a.element.link(b.element).is_ok(),
                _ => a.element.link_pads(a.pad, b.element, b.pad).is_ok(),
            };
            if !ok {
                return Err(format!(
                    "cannot link {}{} to {}{}",
                    a.element.name(),
                    a.pad.map(|p| format!(".{p}")).unwrap_or_default(),
                    b.element.name(),
                    b.pad.map(|p| format!(".{p}")).unwrap_or_default()
                ));
            }
        }
        self.record(ends);
        Ok(())
    }

    /// Records a link the caller makes when its pad appears (`rtspsrc`, a demuxer,
    /// `decodebin`): in a launch line it is written as any other.
    pub fn delayed(&mut self, ends: &[End]) {
        self.record(ends);
    }

    fn record(&mut self, ends: &[End]) {
        self.statements.push(
            ends.iter()
                .enumerate()
                .map(|(i, e)| {
                    // The pad a link uses: as the sink of the previous hop (`sink`) or the
                    // source of the next one (`src`); one element in the middle of a chain
                    // with a named pad is written as two statements by the caller.
                    let name = e.element.name().to_string();
                    let p = e.pad.map(String::from);
                    if i == 0 {
                        (name, None, p)
                    } else {
                        (name, p, None)
                    }
                })
                .collect(),
        );
    }

    /// The `gst-launch-1.0` line of what was made (no secret: they are set on the elements,
    /// never recorded). Each element is declared at its first mention, referred to by name
    /// (`name.` or `name.pad`) after.
    pub fn to_launch_line(&self) -> String {
        let decl = |name: &str| {
            self.decls
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, d)| d.clone())
                .unwrap_or_else(|| format!("{name}."))
        };
        let mut declared: HashSet<String> = HashSet::new();
        let mut out: Vec<String> = Vec::new();
        for statement in &self.statements {
            // Elements referred to with a pad must be declared before the statement.
            for (name, sink, src) in statement {
                if (sink.is_some() || src.is_some()) && declared.insert(name.clone()) {
                    out.push(decl(name));
                }
            }
            let mut s = String::new();
            for (i, (name, sink, src)) in statement.iter().enumerate() {
                if i > 0 {
                    s.push_str(" ! ");
                }
                let pad = sink.as_ref().or(src.as_ref());
                if let Some(p) = pad {
                    s.push_str(&format!("{name}.{p}"));
                } else if declared.insert(name.clone()) {
                    s.push_str(&decl(name));
                } else {
                    s.push_str(&format!("{name}."));
                }
            }
            out.push(s);
        }
        // Elements never linked (none in the worker's graphs, but a line must hold them).
        for (name, d) in &self.decls {
            if !declared.contains(name) {
                out.push(d.clone());
            }
        }
        out.join("  ")
    }
}

/// A property value for a launch line: quoted when it holds anything but a plain word.
fn quote(v: &str) -> String {
    if !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/+".contains(c))
    {
        v.to_string()
    } else {
        format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// The elements and links of a bin, for comparing a built graph with its parsed launch line:
/// (`factory name`, sorted) and (`src element → sink element`, sorted).
pub fn shape(bin: &gst::Bin) -> (Vec<String>, Vec<String>) {
    let mut elements = Vec::new();
    let mut links = Vec::new();
    let mut todo = vec![bin.clone()];
    let mut all = Vec::new();
    while let Some(b) = todo.pop() {
        let mut it = b.iterate_elements();
        while let Ok(Some(e)) = it.next() {
            // Our own bins (the source's) are looked into; a factory's (decodebin) is one
            // element.
            match e.clone().downcast::<gst::Bin>() {
                Ok(inner) if is_plain_bin(&e) => todo.push(inner),
                _ => all.push(e),
            }
        }
    }
    for e in all {
        let factory = e
            .factory()
            .map(|f| f.name().to_string())
            .unwrap_or_default();
        elements.push(format!("{factory} {}", e.name()));
        for p in e.src_pads() {
            if let Some(peer) = p.peer().and_then(|p| real_parent(&p)) {
                links.push(format!("{} -> {}", e.name(), peer.name()));
            }
        }
    }
    elements.sort();
    links.sort();
    (elements, links)
}

/// A bin of our own (`gst::Bin::new`: factory `bin`), not an element that is a bin inside
/// (`decodebin`).
fn is_plain_bin(e: &gst::Element) -> bool {
    e.is::<gst::Bin>() && e.factory().is_none_or(|f| f.name() == "bin")
}

/// The element behind a pad, through ghost pads (into a bin: the ghost's target; out of
/// one: from the ghost's internal pad to the ghost's peer).
fn real_parent(pad: &gst::Pad) -> Option<gst::Element> {
    if let Some(g) = pad.downcast_ref::<gst::GhostPad>() {
        // A bin made by a factory (decodebin) is one element; one of ours is looked into.
        if let Some(bin) = g.parent_element()
            && !is_plain_bin(&bin)
        {
            return Some(bin);
        }
        return g.target().and_then(|t| real_parent(&t));
    }
    if let Some(g) = pad
        .parent()
        .and_then(|p| p.downcast::<gst::GhostPad>().ok())
    {
        return g.peer().and_then(|p| real_parent(&p));
    }
    pad.parent_element()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_quoted_when_needed() {
        assert_eq!(quote("es"), "es");
        assert_eq!(quote("6000000000"), "6000000000");
        assert_eq!(quote(r#"a "b" \c"#), r#""a \"b\" \\c""#);
        assert_eq!(
            quote("audio/x-raw,format=S16LE"),
            "\"audio/x-raw,format=S16LE\""
        );
    }

    #[test]
    fn a_graph_and_its_line_are_the_same_pipeline() {
        crate::init().unwrap();
        let p = gst::Pipeline::new();
        let mut g = Graph::new(p.upcast_ref());
        let src = g
            .make("audiotestsrc", "src", &[("num-buffers", "5".into())])
            .unwrap();
        let tee = g.make("tee", "t", &[]).unwrap();
        let caps = g.caps("f", "audio/x-raw,rate=48000").unwrap();
        let a = g.make("fakesink", "a", &[]).unwrap();
        let b = g.make("fakesink", "b", &[]).unwrap();
        g.chain(&[el(&src), el(&caps), el(&tee)]).unwrap();
        g.chain(&[el(&tee), el(&a)]).unwrap();
        g.chain(&[el(&tee), el(&b)]).unwrap();
        let line = g.to_launch_line();
        assert_eq!(
            line,
            "audiotestsrc name=src num-buffers=5 ! capsfilter name=f caps=\"audio/x-raw,rate=48000\" ! tee name=t  t. ! fakesink name=a  t. ! fakesink name=b"
        );
        let parsed = gst::parse::launch(&line)
            .unwrap()
            .downcast::<gst::Bin>()
            .unwrap();
        assert_eq!(shape(&parsed), shape(p.upcast_ref()));
    }
}
