//! A crate's module graph, read from its sources: which module's code names which other
//! module, so that the structure test can look for import circles.
//!
//! A file's module path comes from its place under `src/`. Its code (the whole file, test
//! modules included; comments and literals blanked) is read for paths that start with
//! `crate::`, `super::` or `self::`, in `use` trees (braces expanded) and in expressions.
//! A path is resolved the way the compiler does, through the re-exports it passes: when
//! `lifecycle/mod.rs` says `pub use ends::{close}`, a path to `crate::lifecycle::close` is an
//! edge to `lifecycle::ends`, the file that holds it. A glob (`pub use ends::*`) cannot be
//! followed, so [`globs`] lists every one outside test modules, for the test to refuse.
//!
//! A module's own ancestors and descendants are not edges: a parent declares its children,
//! a child may use its parent.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module → the modules its code names.
pub type Graph = BTreeMap<String, BTreeSet<String>>;

/// Every `.rs` file under `dir`, sorted.
pub fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// `src/a/b.rs` → `a::b`; `src/a/mod.rs` → `a`; `src/lib.rs` → `` (the crate root).
pub fn module_path(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap_or(file).with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts.join("::")
}

/// `text` with comments, string and char literals replaced by spaces (lines kept), so that
/// neither a doc comment nor a message naming `crate::x` reads as a path.
pub fn code(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if c == 'r' && matches!(next, Some('"' | '#')) && raw_start(&chars[..i]) {
            // A raw string: r"…", r#"…"#.
            let hashes = chars[i + 1..].iter().take_while(|c| **c == '#').count();
            if chars.get(i + 1 + hashes) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            let close: String = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            let body_start = i + 2 + hashes;
            let rest: String = chars[body_start..].iter().collect();
            let len = rest.find(&close).map_or(rest.chars().count(), |at| {
                rest[..at].chars().count() + close.len()
            });
            for c in &chars[i..(body_start + len).min(chars.len())] {
                out.push(blank(*c));
            }
            i = body_start + len;
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < chars.len() {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{1F}'); a lifetime ('a) has no closing quote.
            let close = if next == Some('\\') {
                chars[i + 2..]
                    .iter()
                    .position(|c| *c == '\'')
                    .map(|p| i + 2 + p)
            } else if chars.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match close {
                Some(end) => {
                    for _ in i..=end {
                        out.push(' ');
                    }
                    i = end + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Whether an `r` after `before` starts a raw string (`r"`, `br"`), not an identifier's end.
fn raw_start(before: &[char]) -> bool {
    let word = |c: &char| c.is_alphanumeric() || *c == '_';
    match before {
        [.., p, 'b'] => !word(p),
        [.., 'b'] => true,
        [.., p] => !word(p),
        [] => true,
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Sym(char),
    /// `::`
    Path,
}

fn tokens(code: &str) -> Vec<Token> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            // A macro's `$name` is one token; `$crate` is a macro's path to its own crate.
            if start > 0 && chars[start - 1] == '$' {
                out.pop();
                out.push(Token::Ident(format!(
                    "${}",
                    chars[start..i].iter().collect::<String>()
                )));
            } else {
                out.push(Token::Ident(chars[start..i].iter().collect()));
            }
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push(Token::Path);
            i += 2;
        } else if c.is_whitespace() {
            i += 1;
        } else {
            out.push(Token::Sym(c));
            i += 1;
        }
    }
    out
}

/// One path a file names: the module it is named from (the file's, or an inline module in
/// it), its segments, and, for a `use`, the name it binds there (which the module's children,
/// or anyone when it is `pub`, may name it by).
#[derive(Debug, Clone)]
struct Named {
    from: Vec<String>,
    path: Vec<String>,
    binds: Option<String>,
    glob: bool,
    in_test: bool,
}

/// Expands a `use` tree starting at `tokens[*i]` into its paths: (segments, alias, glob).
fn use_tree(
    tokens: &[Token],
    i: &mut usize,
    prefix: &[String],
) -> Vec<(Vec<String>, Option<String>, bool)> {
    let mut path = prefix.to_vec();
    let mut out = Vec::new();
    loop {
        match tokens.get(*i) {
            Some(Token::Path) => *i += 1,
            Some(Token::Ident(id)) if id == "as" => {
                *i += 1;
                let alias = match tokens.get(*i) {
                    Some(Token::Ident(a)) => Some(a.clone()),
                    _ => None,
                };
                *i += 1;
                out.push((path, alias, false));
                return out;
            }
            Some(Token::Ident(id)) => {
                if id != "self" || path.is_empty() {
                    path.push(id.clone());
                }
                *i += 1;
            }
            Some(Token::Sym('*')) => {
                *i += 1;
                out.push((path, None, true));
                return out;
            }
            Some(Token::Sym('{')) => {
                *i += 1;
                loop {
                    match tokens.get(*i) {
                        Some(Token::Sym('}')) => {
                            *i += 1;
                            return out;
                        }
                        Some(Token::Sym(',')) => *i += 1,
                        None => return out,
                        _ => out.extend(use_tree(tokens, i, &path)),
                    }
                }
            }
            _ => {
                out.push((path, None, false));
                return out;
            }
        }
    }
}

/// Every `crate::`/`super::`/`self::` path in a file (and every `use` tree), with the inline
/// module each is named from.
fn named(file_module: &[String], code: &str) -> Vec<Named> {
    let tokens = tokens(code);
    let mut out = Vec::new();
    // Inline modules open around this point: (name, the brace depth inside them).
    let mut inline: Vec<(String, usize, bool)> = Vec::new();
    let mut depth = 0usize;
    let mut cfg_test = false;
    let mut i = 0;
    while i < tokens.len() {
        let from = || {
            let mut m = file_module.to_vec();
            m.extend(inline.iter().map(|(n, _, _)| n.clone()));
            m
        };
        let in_test = inline.iter().any(|(_, _, t)| *t);
        match &tokens[i] {
            Token::Sym('#') => {
                // `#[cfg(test)]` marks the item that follows.
                let window: Vec<&Token> = tokens[i..].iter().take(7).collect();
                if window.len() == 7
                    && window[2] == &Token::Ident("cfg".into())
                    && window[4] == &Token::Ident("test".into())
                {
                    cfg_test = true;
                }
                i += 1;
            }
            Token::Sym('{') => {
                depth += 1;
                i += 1;
            }
            Token::Sym('}') => {
                depth = depth.saturating_sub(1);
                while inline.last().is_some_and(|(_, d, _)| *d > depth) {
                    inline.pop();
                }
                i += 1;
            }
            Token::Sym(';') => {
                cfg_test = false;
                i += 1;
            }
            Token::Ident(id) if id == "mod" => {
                if let (Some(Token::Ident(name)), Some(Token::Sym('{'))) =
                    (tokens.get(i + 1), tokens.get(i + 2))
                {
                    depth += 1;
                    let test = cfg_test || name == "tests" || in_test;
                    inline.push((name.clone(), depth, test));
                    cfg_test = false;
                    i += 3;
                } else {
                    i += 1;
                }
            }
            Token::Ident(id) if id == "use" => {
                i += 1;
                let from = from();
                for (path, alias, glob) in use_tree(&tokens, &mut i, &[]) {
                    let binds = alias.or_else(|| path.last().cloned());
                    out.push(Named {
                        from: from.clone(),
                        path,
                        binds,
                        glob,
                        in_test: in_test || cfg_test,
                    });
                }
                cfg_test = false;
            }
            Token::Ident(id)
                if matches!(id.as_str(), "crate" | "super" | "self")
                    && tokens.get(i + 1) == Some(&Token::Path)
                    && !(i > 0 && tokens[i - 1] == Token::Path) =>
            {
                let mut path = vec![id.clone()];
                let mut j = i + 1;
                while tokens.get(j) == Some(&Token::Path) {
                    match tokens.get(j + 1) {
                        Some(Token::Ident(seg)) => {
                            path.push(seg.clone());
                            j += 2;
                        }
                        _ => break,
                    }
                }
                out.push(Named {
                    from: from(),
                    path,
                    binds: None,
                    glob: false,
                    in_test,
                });
                i = j;
            }
            _ => i += 1,
        }
    }
    out
}

/// `path` named from module `from`, as absolute segments; `None` for another crate's path
/// (or a local item's).
fn absolute(from: &[String], path: &[String], modules: &BTreeSet<String>) -> Option<Vec<String>> {
    let first = path.first()?;
    let mut base: Vec<String> = from.to_vec();
    let mut rest = path;
    match first.as_str() {
        "crate" => {
            base.clear();
            rest = &path[1..];
        }
        "super" => {
            while rest.first().is_some_and(|s| s == "super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        "self" => rest = &path[1..],
        // A child module of `from`; anything else is another crate or a local item.
        _ => {
            let mut child = from.to_vec();
            child.push(first.clone());
            if !modules.contains(&child.join("::")) {
                return None;
            }
        }
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

fn related(a: &str, b: &str) -> bool {
    a == b
        || a.is_empty()
        || b.is_empty()
        || a.starts_with(&format!("{b}::"))
        || b.starts_with(&format!("{a}::"))
}

/// What a crate's files name, read once.
pub struct Crate {
    /// Module path → file.
    pub modules: BTreeMap<String, PathBuf>,
    named: Vec<(String, Named)>,
}

impl Crate {
    /// Reads every file under `src`.
    pub fn read(src: &Path) -> Crate {
        let modules: BTreeMap<String, PathBuf> = sources(src)
            .into_iter()
            .map(|f| (module_path(src, &f), f))
            .collect();
        let mut named_all = Vec::new();
        for (module, file) in &modules {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            let segments: Vec<String> = if module.is_empty() {
                Vec::new()
            } else {
                module.split("::").map(str::to_owned).collect()
            };
            // A `tests.rs` file is a test module as a whole.
            let whole_test = file.file_name().is_some_and(|n| n == "tests.rs");
            for mut n in named(&segments, &code(&text)) {
                n.in_test |= whole_test;
                named_all.push((module.clone(), n));
            }
        }
        Crate {
            modules,
            named: named_all,
        }
    }

    /// The module (file) that holds what `path` names, following re-exports.
    fn target(
        &self,
        path: Vec<String>,
        bindings: &BTreeMap<(String, String), Vec<String>>,
    ) -> Option<String> {
        let mut path = path;
        for _ in 0..16 {
            let k = (1..=path.len())
                .rev()
                .find(|k| self.modules.contains_key(&path[..*k].join("::")))
                .unwrap_or(0);
            let module = path[..k].join("::");
            let Some(name) = path.get(k) else {
                return Some(module);
            };
            match bindings.get(&(module.clone(), name.clone())) {
                Some(original) if *original != path[..=k] => {
                    let mut next = original.clone();
                    next.extend(path[k + 1..].iter().cloned());
                    path = next;
                }
                _ => return Some(module),
            }
        }
        None
    }

    /// The module graph: each file's module → the modules (files) its code names.
    pub fn graph(&self) -> Graph {
        let names: BTreeSet<String> = self.modules.keys().cloned().collect();
        let mut bindings: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for (_, n) in &self.named {
            if let (Some(name), false) = (&n.binds, n.glob) {
                if let Some(original) = absolute(&n.from, &n.path, &names) {
                    bindings.insert((n.from.join("::"), name.clone()), original);
                }
            }
        }
        let mut edges: Graph = self
            .modules
            .keys()
            .map(|m| (m.clone(), BTreeSet::new()))
            .collect();
        for (module, n) in &self.named {
            let Some(path) = absolute(&n.from, &n.path, &names) else {
                continue;
            };
            if let Some(target) = self.target(path, &bindings) {
                if !related(module, &target) {
                    edges.entry(module.clone()).or_default().insert(target);
                }
            }
        }
        edges
    }

    /// Every glob import or re-export of this crate's own modules outside test modules, as
    /// `module: use path::*` — each one hides which file a name comes from.
    pub fn globs(&self) -> Vec<String> {
        let names: BTreeSet<String> = self.modules.keys().cloned().collect();
        self.named
            .iter()
            .filter(|(_, n)| n.glob && !n.in_test)
            // An inline module's glob of the file around it hides nothing.
            .filter(|(module, n)| {
                absolute(&n.from, &n.path, &names).is_some_and(|to| to.join("::") != *module)
            })
            .map(|(module, n)| format!("{module}: use {}::*", n.path.join("::")))
            .collect()
    }
}

/// Circles in the graph (strongly connected components of more than one module).
pub fn circles(edges: &Graph) -> Vec<Vec<String>> {
    // Modules reachable from each module; two modules are in one circle when each reaches
    // the other. The graphs are small (a few hundred modules).
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_owned()];
        while let Some(m) = stack.pop() {
            for n in edges.get(&m).into_iter().flatten() {
                if seen.insert(n.clone()) {
                    stack.push(n.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<String>> =
        edges.keys().map(|m| (m, reach(m))).collect();
    let mut out: Vec<Vec<String>> = Vec::new();
    for m in edges.keys() {
        let circle: Vec<String> = edges
            .keys()
            .filter(|n| *n == m || (reaches[m].contains(*n) && reaches[n].contains(m)))
            .cloned()
            .collect();
        if circle.len() > 1 && !out.contains(&circle) {
            out.push(circle);
        }
    }
    out
}
