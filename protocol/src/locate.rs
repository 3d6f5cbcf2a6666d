//! Where each node of a YAML document sits, by the document path serde_yaml prints
//! (`steps[2].disk.min_read_mbps`), so rules checked after parsing can name `LINE:COLUMN`.
//!
//! Building the index walks the YAML event stream once and also bounds what aliases would
//! expand to: a "billion laughs" document is refused here, in time linear in its length,
//! before anything expands it.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScanError};

/// Most nodes a suite may hold once every alias is expanded. Real suites hold hundreds.
pub const MAX_EXPANDED_NODES: u64 = 100_000;
/// Deepest nesting a suite may use.
pub const MAX_DEPTH: usize = 64;

/// A place in the source, both numbers counted from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// Line, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub column: usize,
}

/// A document that could not be indexed: malformed YAML, or aliases that expand too far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexError {
    /// Where the problem is.
    pub at: Position,
    /// What is wrong and what was expected.
    pub message: String,
}

/// Positions of every node, keyed by document path.
#[derive(Debug, Default)]
pub struct DocumentIndex {
    positions: HashMap<String, Position>,
}

enum Frame {
    Seq {
        path: String,
        next: usize,
        anchor: usize,
        size: u64,
    },
    Map {
        path: String,
        key: Option<String>,
        anchor: usize,
        size: u64,
    },
}

impl Frame {
    fn size_mut(&mut self) -> &mut u64 {
        match self {
            Frame::Seq { size, .. } | Frame::Map { size, .. } => size,
        }
    }
}

/// Joins a parent path and a mapping key the way serde_yaml prints paths.
pub fn join_key(parent: &str, key: &str) -> String {
    if parent == "." || parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

impl DocumentIndex {
    /// Indexes `text`, refusing malformed YAML and alias bombs.
    pub fn build(text: &str) -> Result<Self, IndexError> {
        let mut index = DocumentIndex::default();
        let mut stack: Vec<Frame> = Vec::new();
        let mut anchors: HashMap<usize, u64> = HashMap::new();
        let mut root_size: u64 = 0;
        let mut parser = Parser::new_from_str(text);

        while let Some(next) = parser.next_event() {
            let (event, span) = next.map_err(scan_error)?;
            let at = Position {
                line: span.start.line(),
                column: span.start.col() + 1,
            };
            // A node's own size once expanded, or None when this event opens a collection
            // (its size is known only when it closes).
            let (node_size, anchor_to_set) = match &event {
                Event::Scalar(_, _, anchor, _) => (Some(1), *anchor),
                Event::Alias(id) => (Some(anchors.get(id).copied().unwrap_or(1)), 0),
                Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                    let path = index.enter(&mut stack, &event, at);
                    if stack.len() >= MAX_DEPTH {
                        return Err(IndexError {
                            at,
                            message: format!(
                                "nesting deeper than {MAX_DEPTH} levels; expected a flatter suite"
                            ),
                        });
                    }
                    let frame = if matches!(event, Event::SequenceStart(..)) {
                        Frame::Seq {
                            path,
                            next: 0,
                            anchor: *anchor,
                            size: 1,
                        }
                    } else {
                        Frame::Map {
                            path,
                            key: None,
                            anchor: *anchor,
                            size: 1,
                        }
                    };
                    stack.push(frame);
                    continue;
                }
                Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                    Some(Frame::Seq { anchor, size, .. } | Frame::Map { anchor, size, .. }) => {
                        (Some(size), anchor)
                    }
                    None => continue,
                },
                _ => continue,
            };
            let Some(size) = node_size else { continue };
            if !matches!(event, Event::SequenceEnd | Event::MappingEnd) {
                index.enter(&mut stack, &event, at);
            }
            if anchor_to_set != 0 {
                anchors.insert(anchor_to_set, size);
            }
            let total = match stack.last_mut() {
                Some(parent) => {
                    let parent_size = parent.size_mut();
                    *parent_size = parent_size.saturating_add(size);
                    *parent_size
                }
                None => {
                    root_size = root_size.saturating_add(size);
                    root_size
                }
            };
            if total > MAX_EXPANDED_NODES {
                return Err(IndexError {
                    at,
                    message: format!(
                        "aliases here expand the document past {MAX_EXPANDED_NODES} nodes \
                         (an alias bomb?); expected anchors and aliases only for small \
                         repeated blocks"
                    ),
                });
            }
        }
        Ok(index)
    }

    /// Records where a node starts and returns its path. Mapping keys are recorded under the
    /// path of the value they introduce, since that is where an editor should jump.
    fn enter(&mut self, stack: &mut [Frame], event: &Event<'_>, at: Position) -> String {
        let path = match stack.last_mut() {
            None => ".".to_owned(),
            Some(Frame::Seq { path, next, .. }) => {
                let here = format!("{path}[{next}]");
                *next += 1;
                here
            }
            Some(Frame::Map { path, key, .. }) => match key.take() {
                Some(key) => join_key(path, &key),
                None => {
                    let name = match event {
                        Event::Scalar(value, ..) => value.to_string(),
                        _ => "?".to_owned(),
                    };
                    let here = join_key(path, &name);
                    self.positions.entry(here.clone()).or_insert(at);
                    *key = Some(name);
                    return here;
                }
            },
        };
        self.positions.entry(path.clone()).or_insert(at);
        path
    }

    /// Where `path` is, or its nearest recorded ancestor (a missing field is reported at the
    /// mapping that lacks it); the top of the file when nothing matches.
    pub fn position(&self, path: &str) -> Position {
        let mut path = path;
        loop {
            if let Some(at) = self.positions.get(path) {
                return *at;
            }
            match path.rfind(['.', '[']) {
                Some(cut) if cut > 0 => path = &path[..cut],
                _ => {
                    return self
                        .positions
                        .get(".")
                        .copied()
                        .unwrap_or(Position { line: 1, column: 1 });
                }
            }
        }
    }
}

fn scan_error(err: ScanError) -> IndexError {
    let marker = err.marker();
    IndexError {
        at: Position {
            line: marker.line().max(1),
            column: marker.col() + 1,
        },
        message: format!("malformed YAML: {}", err.info()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
suite: x
steps:
  - name: a
    memory:
      size: 10%
  - name: b
    disk: {dir: /tmp, min_read_mbps: 5}
";

    #[test]
    fn keys_and_elements_have_positions() {
        let index = DocumentIndex::build(DOC).unwrap();
        assert_eq!(index.position("suite"), Position { line: 1, column: 1 });
        assert_eq!(index.position("steps[0]"), Position { line: 3, column: 5 });
        assert_eq!(
            index.position("steps[0].memory.size"),
            Position { line: 5, column: 7 }
        );
        assert_eq!(
            index.position("steps[1].disk.min_read_mbps"),
            Position {
                line: 7,
                column: 23
            }
        );
    }

    #[test]
    fn unknown_paths_fall_back_to_the_nearest_ancestor() {
        let index = DocumentIndex::build(DOC).unwrap();
        assert_eq!(
            index.position("steps[1].disk.nothing"),
            Position { line: 7, column: 5 }
        );
        assert_eq!(
            index.position("steps[1].disk.degraded.min_gbps"),
            Position { line: 7, column: 5 }
        );
    }

    #[test]
    fn billion_laughs_is_refused_at_the_alias_that_overflows() {
        let mut doc = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for level in 1..10 {
            let prev = level - 1;
            doc.push_str(&format!(
                "a{level}: &a{level} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        let err = DocumentIndex::build(&doc).unwrap_err();
        assert!(err.message.contains("alias bomb"), "{}", err.message);
        assert_eq!(err.at.line, 5);
    }

    #[test]
    fn small_aliases_are_fine() {
        let doc = "base: &b {size: 10%}\nother: *b\nmore: *b\n";
        assert!(DocumentIndex::build(doc).is_ok());
    }

    #[test]
    fn malformed_yaml_names_its_position() {
        let err = DocumentIndex::build("steps:\n  - name: [a\n").unwrap_err();
        assert!(err.message.starts_with("malformed YAML"), "{}", err.message);
        assert!(err.at.line >= 2, "{:?}", err.at);
    }
}
