//! The README's property tables are the elements' own: every property an element has is in its
//! table and every row names a property it has, with its type, and its default where the
//! table gives a number (times in ns written as `8 s`, `10 ms`; bytes as `16 MiB`).

mod common;

use gst::glib;
use gst::prelude::*;

const README: &str = include_str!("../README.md");

/// The rows of the property table under `## \`<element>\``: (names, type, default).
fn table(element: &str) -> Vec<(Vec<String>, String, String)> {
    let heading = format!("## `{element}`");
    let start = README
        .find(&heading)
        .unwrap_or_else(|| panic!("no {heading} in the README"));
    let section = &README[start + heading.len()..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let mut rows = Vec::new();
    let mut in_table = false;
    for line in section.lines() {
        if line.starts_with("| property |") {
            in_table = true;
            continue;
        }
        if !in_table || line.starts_with("|---") {
            continue;
        }
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let names = cells[1]
            .split('/')
            .map(|n| n.trim().trim_matches('`').to_string())
            .collect();
        rows.push((names, cells[2].to_string(), cells[3].to_string()));
    }
    assert!(!rows.is_empty(), "no property table for {element}");
    rows
}

/// A README default as a number: `8 s`, `10 ms`, `1.5 s`, `16 MiB`, `12`, `−12`.
fn number(default: &str) -> Option<f64> {
    let d = default.replace('−', "-");
    let mut parts = d.split_whitespace();
    let value: f64 = parts.next()?.parse().ok()?;
    let scale = match parts.next() {
        None => 1.0,
        Some("s") => 1e9,
        Some("ms") => 1e6,
        Some("MiB") => (1u64 << 20) as f64,
        Some(_) => return None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some(value * scale)
}

fn check(element: &str) {
    common::init();
    let e = gst::ElementFactory::make(element).build().unwrap();
    let specs: Vec<glib::ParamSpec> = e
        .list_properties()
        .into_iter()
        .filter(|p| p.owner_type() == e.type_())
        .collect();
    let rows = table(element);
    let documented: Vec<&String> = rows.iter().flat_map(|(n, _, _)| n).collect();
    for p in &specs {
        assert!(
            documented.iter().any(|n| *n == p.name()),
            "{element}: property {} is not in the README's table",
            p.name()
        );
    }
    for (names, ty, default) in &rows {
        for (k, name) in names.iter().enumerate() {
            let p = specs.iter().find(|p| p.name() == name).unwrap_or_else(|| {
                panic!("{element}: the README documents {name}, which it has not")
            });
            let value_type = p.value_type();
            let expected = if value_type == u64::static_type() {
                "u64"
            } else if value_type == u32::static_type() {
                "u32"
            } else if value_type == f64::static_type() {
                "double"
            } else if value_type == bool::static_type() {
                "bool"
            } else if value_type == String::static_type() {
                "string"
            } else if value_type == gst::Structure::static_type() {
                "GstStructure"
            } else {
                "enum"
            };
            assert!(
                ty.starts_with(expected),
                "{element}: {name} is a {expected}, the README says {ty:?}"
            );
            // Rows of several properties give their defaults in the same order.
            let default = default.split('/').nth(k).unwrap_or(default).trim();
            let default = default.split(" (").next().unwrap_or(default);
            let Some(doc) = number(default) else { continue };
            let actual = p.default_value();
            let actual = if let Ok(v) = actual.get::<u64>() {
                v as f64
            } else if let Ok(v) = actual.get::<u32>() {
                f64::from(v)
            } else if let Ok(v) = actual.get::<f64>() {
                v
            } else {
                continue;
            };
            assert!(
                actual == doc || (actual - doc).abs() <= actual.abs() * 1e-3 + 1e-9,
                "{element}: {name} defaults to {actual}, the README says {default}"
            );
        }
    }
}

#[test]
fn dubchunker_properties_are_documented() {
    check("dubchunker");
}

#[test]
fn stsbridge_properties_are_documented() {
    check("stsbridge");
}

#[test]
fn avoffset_properties_are_documented() {
    check("avoffset");
}
