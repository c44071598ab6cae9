//! Manifest diagnostics: `file:line:col: message`, the offending source line with a
//! caret, and a hint.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Where a value came from: a place in the manifest file or a command-line flag.
#[derive(Clone, Debug, PartialEq)]
pub enum Origin {
    File {
        line: usize,
        col: usize,
    },
    Flag(String),
    /// The file as a whole (it could not be read).
    Nowhere,
}

impl Origin {
    /// The manifest line, or 0 for a flag or the file as a whole.
    pub fn line(&self) -> usize {
        match self {
            Origin::File { line, .. } => *line,
            _ => 0,
        }
    }
}

/// Maps byte offsets of one manifest to line/column and source lines.
#[derive(Debug, Clone)]
pub struct SourceMap {
    pub path: PathBuf,
    text: String,
    line_starts: Vec<usize>,
}

impl SourceMap {
    pub fn new(path: &Path, text: &str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        SourceMap {
            path: path.to_path_buf(),
            text: text.to_string(),
            line_starts,
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn origin(&self, span: &Range<usize>) -> Origin {
        let offset = span.start.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset) - 1;
        let start = self.line_starts[line];
        let col = self.text[start..offset].chars().count() + 1;
        Origin::File {
            line: line + 1,
            col,
        }
    }

    fn line_text(&self, line: usize) -> &str {
        let start = self.line_starts[line - 1];
        let end = self
            .line_starts
            .get(line)
            .copied()
            .unwrap_or(self.text.len());
        self.text[start..end].trim_end_matches(['\n', '\r'])
    }

    pub fn error(&self, origin: &Origin, message: impl Into<String>) -> Diagnostic {
        let snippet = match origin {
            Origin::File { line, .. } => Some(self.line_text(*line).to_string()),
            Origin::Flag(_) | Origin::Nowhere => None,
        };
        Diagnostic {
            file: self.path.clone(),
            origin: origin.clone(),
            message: message.into(),
            hint: None,
            note: None,
            snippet,
        }
    }
}

/// One error in a manifest.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub origin: Origin,
    pub message: String,
    pub hint: Option<String>,
    /// Where else the error comes from (the stage that extends a template).
    pub note: Option<String>,
    snippet: Option<String>,
}

impl Diagnostic {
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Adds "did you mean `x`?" when a known name is close to `got`, otherwise lists them.
    pub fn suggest<'a>(self, got: &str, known: impl IntoIterator<Item = &'a str>) -> Self {
        let known: Vec<&str> = known.into_iter().collect();
        let best = known
            .iter()
            .map(|k| (strsim::damerau_levenshtein(got, k), *k))
            .filter(|(d, k)| *d <= 2.max(k.len() / 3))
            .min();
        match best {
            Some((_, k)) => self.hint(format!("did you mean `{k}`?")),
            None if known.is_empty() => self,
            None => self.hint(format!("expected one of: {}", known.join(", "))),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::File { line, col } => {
                writeln!(
                    f,
                    "{}:{line}:{col}: error: {}",
                    self.file.display(),
                    self.message
                )?;
                if let Some(snippet) = &self.snippet {
                    let gutter = line.to_string().len();
                    writeln!(f, "{:gutter$} |", "")?;
                    writeln!(f, "{line} | {snippet}")?;
                    let pad: String = snippet
                        .chars()
                        .take(col - 1)
                        .map(|c| if c == '\t' { '\t' } else { ' ' })
                        .collect();
                    writeln!(f, "{:gutter$} | {pad}^", "")?;
                }
            }
            Origin::Nowhere => writeln!(f, "{}: error: {}", self.file.display(), self.message)?,
            Origin::Flag(flag) => writeln!(
                f,
                "{}: error in `{flag}`: {}",
                self.file.display(),
                self.message
            )?,
        }
        if let Some(note) = &self.note {
            writeln!(f, "  = note: {note}")?;
        }
        if let Some(hint) = &self.hint {
            writeln!(f, "  = hint: {hint}")?;
        }
        Ok(())
    }
}

/// All errors found while loading one manifest.
#[derive(Debug, Clone)]
pub struct ManifestErrors(pub Vec<Diagnostic>);

impl fmt::Display for ManifestErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            write!(f, "{d}")?;
        }
        if self.0.len() > 1 {
            writeln!(f, "{} errors in manifest", self.0.len())?;
        }
        Ok(())
    }
}

impl std::error::Error for ManifestErrors {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_map_to_lines_and_columns() {
        let map = SourceMap::new(Path::new("m.toml"), "a = 1\nbé = 2\n");
        assert_eq!(map.origin(&(0..1)), Origin::File { line: 1, col: 1 });
        assert_eq!(map.origin(&(6..7)), Origin::File { line: 2, col: 1 });
        // column counts characters, not bytes
        assert_eq!(map.origin(&(10..11)), Origin::File { line: 2, col: 4 });
    }

    #[test]
    fn rendering_shows_caret_and_hint() {
        let map = SourceMap::new(Path::new("m.toml"), "[stages.a]\nkidn = 1\n");
        let d = map
            .error(&map.origin(&(11..15)), "unknown key `kidn`")
            .suggest("kidn", ["kind", "inputs"]);
        let text = d.to_string();
        assert!(text.starts_with("m.toml:2:1: error: unknown key `kidn`"));
        assert!(text.contains("2 | kidn = 1"));
        assert!(text.contains("hint: did you mean `kind`?"));
    }
}
