//! The documentation stands on its own: no file of the repository cites a document it does not
//! ship, every citation of a reference page (`docs/<page>.md`, with a `#anchor` or a
//! “Section” name) points at a page and a section that exist, every relative Markdown link resolves, and
//! every reference page is reachable from the index, docs/README.md, which README.md links.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Text files under the repository's own folders and at its top level (not `target/`, not the
/// binary and generated fixtures), as (path relative to the root, content).
fn repository_texts() -> Vec<(PathBuf, String)> {
    let root = root();
    let mut out = Vec::new();
    let mut pending: Vec<PathBuf> = [
        "README.md",
        "BENCHMARKS.md",
        "Cargo.toml",
        "build.rs",
        ".ci",
        "kernels",
        "scripts",
        "src",
        "tests",
        "benches",
        "python",
        "experiments",
        "docs",
    ]
    .iter()
    .map(|p| root.join(p))
    .filter(|p| p.exists())
    .collect();
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "fixtures") {
                continue;
            }
            for entry in std::fs::read_dir(&path).unwrap() {
                pending.push(entry.unwrap().path());
            }
            continue;
        }
        let rel = path.strip_prefix(&root).unwrap().to_path_buf();
        let text_ext = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("rs" | "md" | "py" | "sh" | "toml" | "txt" | "cu" | "cuh" | "cpp" | "h")
        );
        if !text_ext && !rel.starts_with(".ci") {
            continue;
        }
        if let Ok(text) = std::fs::read_to_string(&path) {
            out.push((rel, text));
        }
    }
    out.sort();
    out
}

/// GitHub's anchor for a heading: lower case, letters, digits, `-` and `_` kept, spaces turned
/// into `-`, everything else dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown page's headings (outside code blocks), with GitHub's `-1`, `-2`
/// suffixes for repeated ones.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let text = line.trim_start_matches('#');
        if !text.starts_with(' ') {
            continue;
        }
        let base = slug(text);
        let n = seen.entry(base.clone()).or_insert(0);
        out.insert(if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        });
        *n += 1;
    }
    out
}

/// The reference pages, by file name, with their anchors.
fn pages() -> BTreeMap<String, BTreeSet<String>> {
    let dir = root().join("docs");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("the docs/ folder exists") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            let text = std::fs::read_to_string(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            out.insert(name, anchors(&text));
        }
    }
    out
}

/// The text with comment markers removed from the start of every line and the lines joined, so
/// that a citation broken across comment lines reads as one.
fn joined(text: &str) -> String {
    text.lines()
        .map(|l| {
            let t = l.trim_start();
            let t = ["//!", "///", "//", "#"]
                .iter()
                .find_map(|m| t.strip_prefix(m))
                .unwrap_or(t);
            t.trim()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A citation of a reference page: the page, and the anchor or section names cited with it.
#[derive(Debug)]
struct Citation {
    page: String,
    sections: Vec<String>,
    anchor: Option<String>,
}

/// Every `docs/<page>.md` in `text`, followed optionally by `#anchor`, or by `, “Section”` (also
/// `, “A” and “B”`).
fn citations(text: &str) -> Vec<Citation> {
    let text = joined(text);
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("docs/") {
        let after = &rest[i + 5..];
        rest = after;
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
            .unwrap_or(after.len());
        let name = after[..name_len].trim_end_matches('.');
        if !name.ends_with(".md") {
            continue;
        }
        let mut tail = &after[name.len()..];
        let mut c = Citation {
            page: name.to_string(),
            sections: vec![],
            anchor: None,
        };
        if let Some(a) = tail.strip_prefix('#') {
            let len = a
                .find(|ch: char| !(ch.is_alphanumeric() || ch == '-' || ch == '_'))
                .unwrap_or(a.len());
            c.anchor = Some(a[..len].to_string());
        } else if let Some(t) = tail.strip_prefix(", “") {
            tail = t;
            while let Some(end) = tail.find('”') {
                c.sections
                    .push(tail[..end].split_whitespace().collect::<Vec<_>>().join(" "));
                tail = &tail[end + '”'.len_utf8()..];
                match tail.strip_prefix(" and “") {
                    Some(t) => tail = t,
                    None => break,
                }
            }
        }
        out.push(c);
    }
    out
}

/// The targets of the inline Markdown links `[text](target)` of a page, outside code blocks.
fn markdown_links(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let Some(end) = after.find(')') else { break };
            out.push(after[..end].to_string());
            rest = &after[end..];
        }
    }
    out
}

#[test]
fn no_document_the_repository_lacks_is_cited() {
    // Built at run time so that this file does not match itself.
    let needles = [
        ["SPEC", " §"].concat(),
        ["SPEC", ".md"].concat(),
        ["DEVELOPERS", ".md"].concat(),
        ["../", "shared/"].concat(),
    ];
    let mut bad = Vec::new();
    for (path, text) in repository_texts() {
        for (i, line) in text.lines().enumerate() {
            for n in &needles {
                // CI installs the CUDA compiler with the machine's own tool: a command, not a
                // citation of a document.
                let installs_a_tool = path.starts_with(".ci") && line.contains("/tools/");
                if line.contains(n.as_str()) && !installs_a_tool {
                    bad.push(format!("{}:{}: {}", path.display(), i + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "citations of documents the repository does not ship (cite docs/ instead):\n{}",
        bad.join("\n")
    );
}

#[test]
fn cited_pages_and_sections_exist() {
    let pages = pages();
    let mut bad = Vec::new();
    let mut cited = 0;
    for (path, text) in repository_texts() {
        for c in citations(&text) {
            cited += 1;
            let Some(anchors) = pages.get(&c.page) else {
                bad.push(format!(
                    "{}: docs/{} does not exist",
                    path.display(),
                    c.page
                ));
                continue;
            };
            if let Some(a) = &c.anchor {
                if !anchors.contains(a) {
                    bad.push(format!(
                        "{}: docs/{}#{a}: no such section (sections: {anchors:?})",
                        path.display(),
                        c.page
                    ));
                }
            }
            for s in &c.sections {
                if !anchors.contains(&slug(s)) {
                    bad.push(format!(
                        "{}: docs/{}, “{s}”: no such section (sections: {anchors:?})",
                        path.display(),
                        c.page
                    ));
                }
            }
        }
    }
    assert!(bad.is_empty(), "broken citations:\n{}", bad.join("\n"));
    assert!(
        cited > 50,
        "only {cited} citations of docs/ found: is the scan broken?"
    );
}

#[test]
fn markdown_links_resolve() {
    let root = root();
    let mut bad = Vec::new();
    let markdown: Vec<(PathBuf, String)> = repository_texts()
        .into_iter()
        .filter(|(p, _)| p.extension().is_some_and(|e| e == "md"))
        .collect();
    for (path, text) in &markdown {
        for link in markdown_links(text) {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = match link.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (link.as_str(), None),
            };
            let target = if file.is_empty() {
                root.join(path)
            } else {
                root.join(path.parent().unwrap_or(Path::new(""))).join(file)
            };
            if !target.exists() {
                bad.push(format!(
                    "{}: ({link}): {} does not exist",
                    path.display(),
                    file
                ));
                continue;
            }
            if let Some(a) = anchor {
                let page = std::fs::read_to_string(&target).unwrap_or_default();
                if !anchors(&page).contains(a) {
                    bad.push(format!("{}: ({link}): no section #{a}", path.display()));
                }
            }
        }
    }
    assert!(bad.is_empty(), "broken links:\n{}", bad.join("\n"));
}

#[test]
fn every_reference_page_is_reachable_from_the_readme() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(
        markdown_links(&readme)
            .iter()
            .any(|l| l == "docs/README.md"),
        "README.md does not link the reference index docs/README.md"
    );
    let index = std::fs::read_to_string(root().join("docs/README.md")).unwrap();
    let linked: BTreeSet<String> = markdown_links(&index)
        .into_iter()
        .map(|l| l.split('#').next().unwrap_or("").to_string())
        .collect();
    for page in pages().keys().filter(|p| *p != "README.md") {
        assert!(
            linked.contains(page),
            "docs/README.md does not link docs/{page}"
        );
    }
}

#[test]
fn anchors_follow_github() {
    let page = "# Title\n## Data navier-stokes\n## `dydiff.json` keys\n```\n# not a heading\n```\n## Title\n";
    let a = anchors(page);
    for want in ["title", "data-navier-stokes", "dydiffjson-keys", "title-1"] {
        assert!(a.contains(want), "{want} missing from {a:?}");
    }
    assert!(!a.contains("not-a-heading"));
    // The page names are filled in at run time, so that the scan does not read these as
    // citations of this file.
    let c = citations(&format!(
        "see (docs/{}.md, “One step” and “Output”) and docs/{}.md#train.",
        "a", "b"
    ));
    assert_eq!(c.len(), 2);
    assert_eq!((c[0].page.as_str(), c[0].sections.len()), ("a.md", 2));
    assert_eq!(c[1].anchor.as_deref(), Some("train"));
    let wrapped = citations(&format!(
        "/// (docs/{}.md, “Model space and data\n    /// space”).",
        "c"
    ));
    assert_eq!(wrapped[0].sections, ["Model space and data space"]);
}
