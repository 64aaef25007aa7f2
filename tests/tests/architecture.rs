//! The shape of `netboot-user/src` (docs/DESIGN.md §3), checked so that it stays:
//!
//! - no two modules import each other, directly or around a circle, at any level of the tree
//!   (the top-level modules among themselves, the files of one folder among themselves);
//! - no file over 600 lines unless its first lines say why it must be one piece.
//!
//! The graph is read with syn from the source, not from rustc: every path that starts with
//! `crate::` or `super::` in a `use`, a type or an expression (code under `#[cfg(test)]` and
//! `tests.rs` files left out: tests may reach anywhere), and every intra-doc link
//! (`[`crate::x`]`), since a link that points up is an arrow a reader follows too. A path into
//! a folder's `mod.rs` that names one of its `pub use` re-exports counts as a path into the
//! child module that defines it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use syn::visit::Visit;

/// Longest file, in lines, that needs no word on why it is one piece.
const MAX_LINES: usize = 600;

/// A module: its path from the crate root (`["http", "conn"]`).
type ModPath = Vec<String>;

struct Crate {
    /// Every module of the tree and the file that holds it, with its text and syntax tree
    /// (parsed once, read twice: for the re-exports, then for the paths).
    files: BTreeMap<ModPath, (PathBuf, String, syn::File)>,
    /// `pub use child::{Name, ...}` of each module: a re-exported name and the child it is from.
    reexports: BTreeMap<ModPath, BTreeMap<String, String>>,
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../netboot-user/src")
}

fn module_of(src: &Path, file: &Path) -> ModPath {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap();
    match last.as_str() {
        "mod.rs" | "lib.rs" | "main.rs" => {}
        other => parts.push(other.trim_end_matches(".rs").to_string()),
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| a.path().is_ident("cfg") && a.meta.require_list().is_ok_and(|l| l.tokens.to_string() == "test"))
}

impl Crate {
    fn read(src: &Path) -> Crate {
        let mut files = Vec::new();
        rust_files(src, &mut files);
        let mut c = Crate { files: BTreeMap::new(), reexports: BTreeMap::new() };
        for f in files {
            if f.file_name().is_some_and(|n| n == "main.rs") {
                continue;
            }
            let m = module_of(src, &f);
            let text = std::fs::read_to_string(&f).unwrap();
            let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let mut names = BTreeMap::new();
            for item in &ast.items {
                if let syn::Item::Use(u) = item
                    && matches!(u.vis, syn::Visibility::Public(_))
                    && let syn::UseTree::Path(p) = &u.tree
                {
                    let mut leaves = Vec::new();
                    leaf_names(&p.tree, &mut leaves);
                    for n in leaves {
                        names.insert(n, p.ident.to_string());
                    }
                }
            }
            c.reexports.insert(m.clone(), names);
            c.files.insert(m, (f, text, ast));
        }
        c
    }

    /// The module a path from `from` names: the longest prefix that is a module, then one more
    /// step through a re-export of that module if the next segment is one.
    fn resolve(&self, from: &ModPath, segs: &[String]) -> Option<ModPath> {
        let mut at: ModPath = match segs.first()?.as_str() {
            "crate" => Vec::new(),
            "super" => {
                let mut m = from.clone();
                m.pop()?;
                m
            }
            _ => return None,
        };
        let mut rest = &segs[1..];
        while let Some(s) = rest.first() {
            if s == "super" {
                at.pop()?;
            } else {
                let mut next = at.clone();
                next.push(s.clone());
                if self.files.contains_key(&next) {
                    at = next;
                } else if let Some(child) = self.reexports.get(&at).and_then(|r| r.get(s)) {
                    at.push(child.clone());
                    break;
                } else {
                    break;
                }
            }
            rest = &rest[1..];
        }
        Some(at)
    }
}

fn leaf_names(t: &syn::UseTree, out: &mut Vec<String>) {
    match t {
        syn::UseTree::Path(p) => leaf_names(&p.tree, out),
        syn::UseTree::Name(n) => out.push(n.ident.to_string()),
        syn::UseTree::Rename(r) => out.push(r.rename.to_string()),
        syn::UseTree::Glob(_) => {}
        syn::UseTree::Group(g) => g.items.iter().for_each(|i| leaf_names(i, out)),
    }
}

/// The paths a file names outside its tests. (The report finds their lines in the text: spans
/// carry none without proc-macro2's `span-locations`, which would change how every proc macro
/// of the workspace is built between `cargo build` and `cargo test`.)
#[derive(Default)]
struct Paths(Vec<Vec<String>>);

impl Paths {
    fn use_tree(&mut self, prefix: &mut Vec<String>, t: &syn::UseTree) {
        match t {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => self.0.push([prefix.clone(), vec![n.ident.to_string()]].concat()),
            syn::UseTree::Rename(r) => self.0.push([prefix.clone(), vec![r.ident.to_string()]].concat()),
            syn::UseTree::Glob(_) => self.0.push(prefix.clone()),
            syn::UseTree::Group(g) => g.items.iter().for_each(|i| self.use_tree(prefix, i)),
        }
    }

    /// Intra-doc links in `///` and `//!` comments: `[`crate::a::b`]` and `[text](crate::a)`.
    fn doc(&mut self, attrs: &[syn::Attribute]) {
        for a in attrs {
            if !a.path().is_ident("doc") {
                continue;
            }
            let syn::Meta::NameValue(nv) = &a.meta else { continue };
            let syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(s), .. }) = &nv.value else { continue };
            let text = s.value();
            for (i, _) in text.match_indices("crate::").chain(text.match_indices("super::")) {
                if i > 0 && matches!(text.as_bytes()[i - 1], b'`' | b'(') {
                    let link: String = text[i..].chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
                    self.0.push(link.split("::").filter(|s| !s.is_empty()).map(str::to_string).collect());
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for Paths {
    fn visit_item(&mut self, i: &'ast syn::Item) {
        let attrs = match i {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Impl(x) => &x.attrs,
            syn::Item::Use(u) => &u.attrs,
            syn::Item::Struct(s) => &s.attrs,
            syn::Item::Enum(e) => &e.attrs,
            syn::Item::Const(c) => &c.attrs,
            syn::Item::Static(s) => &s.attrs,
            syn::Item::Trait(t) => &t.attrs,
            syn::Item::Type(t) => &t.attrs,
            _ => return syn::visit::visit_item(self, i),
        };
        if is_cfg_test(attrs) {
            return;
        }
        syn::visit::visit_item(self, i)
    }

    fn visit_attribute(&mut self, a: &'ast syn::Attribute) {
        self.doc(std::slice::from_ref(a));
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.doc(&u.attrs);
        self.use_tree(&mut Vec::new(), &u.tree);
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        self.0.push(p.segments.iter().map(|s| s.ident.to_string()).collect());
        syn::visit::visit_path(self, p)
    }
}

/// An arrow between two sibling modules (children of the same module), with where it is drawn.
type Arrows = BTreeMap<(ModPath, ModPath), (PathBuf, usize)>;

fn arrows(c: &Crate) -> Arrows {
    let mut out = Arrows::new();
    for (m, (file, text, ast)) in &c.files {
        if file.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let mut paths = Paths::default();
        paths.doc(&ast.attrs);
        for item in &ast.items {
            paths.visit_item(item);
        }
        for segs in paths.0 {
            let Some(to) = c.resolve(m, &segs) else { continue };
            // The arrow between the siblings under the deepest module both are in. A module's
            // path into its own ancestors (a child naming its parent) is no arrow.
            let common = m.iter().zip(&to).take_while(|(a, b)| a == b).count();
            if common == m.len() || common == to.len() {
                continue;
            }
            let key = (m[..=common].to_vec(), to[..=common].to_vec());
            let line = line_naming(text, &to[common]);
            out.entry(key).or_insert((file.clone(), line));
        }
    }
    out
}

/// The first line of `text` that names module `name` in a path (for the report).
fn line_naming(text: &str, name: &str) -> usize {
    let needle = format!("::{name}");
    text.lines().position(|l| l.match_indices(&needle).any(|(i, _)| !l[i + needle.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_'))).map_or(0, |i| i + 1)
}

/// Strongly connected groups of two or more nodes (Tarjan).
fn cycles(arrows: &Arrows) -> Vec<Vec<ModPath>> {
    let mut next: BTreeMap<&ModPath, Vec<&ModPath>> = BTreeMap::new();
    for (a, b) in arrows.keys() {
        next.entry(a).or_default().push(b);
        next.entry(b).or_default();
    }
    struct T<'a> {
        next: &'a BTreeMap<&'a ModPath, Vec<&'a ModPath>>,
        index: BTreeMap<&'a ModPath, usize>,
        low: BTreeMap<&'a ModPath, usize>,
        stack: Vec<&'a ModPath>,
        on: BTreeSet<&'a ModPath>,
        out: Vec<Vec<ModPath>>,
    }
    impl<'a> T<'a> {
        fn visit(&mut self, v: &'a ModPath) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on.insert(v);
            for &w in &self.next[v] {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let l = self.low[v].min(self.low[w]);
                    self.low.insert(v, l);
                } else if self.on.contains(w) {
                    let l = self.low[v].min(self.index[w]);
                    self.low.insert(v, l);
                }
            }
            if self.low[v] == self.index[v] {
                let mut group = Vec::new();
                loop {
                    let w = self.stack.pop().unwrap();
                    self.on.remove(w);
                    group.push(w.clone());
                    if w == v {
                        break;
                    }
                }
                if group.len() > 1 {
                    group.sort();
                    self.out.push(group);
                }
            }
        }
    }
    let mut t = T { next: &next, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), on: BTreeSet::new(), out: Vec::new() };
    for v in next.keys() {
        if !t.index.contains_key(v) {
            t.visit(v);
        }
    }
    t.out
}

#[test]
fn no_two_modules_import_each_other() {
    let c = Crate::read(&src());
    assert!(c.files.len() > 50, "the tree was not read: {} modules", c.files.len());
    let arrows = arrows(&c);
    let top = arrows.keys().filter(|(a, _)| a.len() == 1).count();
    assert!(top > 40, "too few arrows between top-level modules ({top}): the reader is broken");
    let mut report = String::new();
    for group in cycles(&arrows) {
        report += &format!("\ncycle: {}\n", group.iter().map(|m| m.join("::")).collect::<Vec<_>>().join(", "));
        for ((a, b), (file, line)) in &arrows {
            if group.contains(a) && group.contains(b) {
                report += &format!("  {} -> {}  ({}:{line})\n", a.join("::"), b.join("::"), file.strip_prefix(src()).unwrap_or(file).display());
            }
        }
    }
    assert!(report.is_empty(), "modules that import each other (docs/DESIGN.md §3):{report}");
}

/// The checker itself: a circle through a re-export, an ancestor and a doc link is found.
#[test]
fn the_checker_sees_a_circle() {
    let dir = std::env::temp_dir().join(format!("nbx-arch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("a")).unwrap();
    std::fs::write(dir.join("lib.rs"), "pub mod a;\npub mod b;\npub mod c;\n").unwrap();
    std::fs::write(dir.join("a/mod.rs"), "mod x;\npub use x::X;\n").unwrap();
    std::fs::write(dir.join("a/x.rs"), "pub struct X(crate::b::B);\n#[cfg(test)]\nmod tests { use crate::c::C; }\n").unwrap();
    std::fs::write(dir.join("b.rs"), "/// See [`crate::c::C`].\npub struct B;\n").unwrap();
    std::fs::write(dir.join("c.rs"), "use crate::a::X;\npub struct C(X);\n").unwrap();
    let c = Crate::read(&dir);
    let arrows = arrows(&c);
    let m = |s: &str| s.split("::").map(str::to_string).collect::<ModPath>();
    assert!(arrows.contains_key(&(m("c"), m("a"))), "a use through a re-export");
    assert!(arrows.contains_key(&(m("b"), m("c"))), "a doc link");
    assert!(!arrows.contains_key(&(m("a"), m("c"))), "a test module is no arrow");
    assert_eq!(cycles(&arrows), vec![vec![m("a"), m("b"), m("c")]]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn no_file_is_longer_than_a_room_without_saying_why() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut long = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let lines = text.lines().count();
        let says_why = text.lines().take(12).any(|l| l.contains("one piece"));
        if lines > MAX_LINES && !says_why {
            long.push(format!("{} ({lines} lines)", f.strip_prefix(src()).unwrap().display()));
        }
    }
    assert!(long.is_empty(), "over {MAX_LINES} lines with no word at the top on why it is one piece: {long:?}");
}
