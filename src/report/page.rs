//! A report page written once as Markdown (`report.md`, images beside it) and rendered to
//! a self-contained HTML file (`report.html`, images embedded as data URIs) that can be
//! mailed or attached without its folder.

use anyhow::{Context, Result};
use base64::Engine;
use pulldown_cmark::{CowStr, Event, Options, Parser, Tag};
use std::path::Path;

#[derive(Default)]
pub struct Page {
    md: String,
}

/// Markdown table cells must not contain `|` or line breaks.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// A Markdown table (cells escaped), one line per row.
pub fn markdown_table(header: &[String], rows: &[Vec<String>]) -> String {
    let line = |cells: &[String]| {
        let cells: Vec<String> = cells.iter().map(|c| cell(c)).collect();
        format!("| {} |\n", cells.join(" | "))
    };
    let mut out = line(header);
    out.push_str(&format!("|{}\n", "---|".repeat(header.len().max(1))));
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

/// A CSV file: a header line and the rows.
pub fn csv_table(header: &[String], rows: &[Vec<String>]) -> anyhow::Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(header)?;
    for r in rows {
        w.write_record(r)?;
    }
    Ok(w.into_inner()?)
}

impl Page {
    pub fn new(title: &str) -> Page {
        Page {
            md: format!("# {title}\n\n"),
        }
    }

    pub fn heading(&mut self, text: &str) {
        self.md.push_str(&format!("## {text}\n\n"));
    }

    pub fn paragraph(&mut self, text: &str) {
        self.md.push_str(text.trim_end());
        self.md.push_str("\n\n");
    }

    pub fn table(&mut self, header: &[String], rows: &[Vec<String>]) {
        self.md.push_str(&markdown_table(header, rows));
        self.md.push('\n');
    }

    /// An image by its file name, relative to the page's directory.
    pub fn image(&mut self, alt: &str, file: &str) {
        self.md.push_str(&format!("![{}]({file})\n\n", cell(alt)));
    }

    pub fn markdown(&self) -> &str {
        &self.md
    }

    /// The page as one HTML document; images named relative to `dir` are read and
    /// embedded, so the file stands alone.
    pub fn html(&self, title: &str, dir: &Path) -> Result<String> {
        let mut images = Vec::new();
        for event in Parser::new_ext(&self.md, Options::ENABLE_TABLES) {
            if let Event::Start(Tag::Image { dest_url, .. }) = &event {
                images.push(dest_url.to_string());
            }
        }
        let mut uris = std::collections::HashMap::new();
        for name in images {
            let path = dir.join(&name);
            let bytes =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let mime = match path.extension().and_then(|e| e.to_str()) {
                Some("svg") => "image/svg+xml",
                _ => "image/png",
            };
            let data = base64::engine::general_purpose::STANDARD.encode(bytes);
            uris.insert(name, format!("data:{mime};base64,{data}"));
        }
        let events = Parser::new_ext(&self.md, Options::ENABLE_TABLES).map(|event| match event {
            Event::Start(Tag::Image {
                link_type,
                dest_url,
                title,
                id,
            }) => Event::Start(Tag::Image {
                link_type,
                dest_url: uris
                    .get(dest_url.as_ref())
                    .map(|u| CowStr::from(u.clone()))
                    .unwrap_or(dest_url),
                title,
                id,
            }),
            other => other,
        });
        let mut body = String::new();
        pulldown_cmark::html::push_html(&mut body, events);
        let escaped_title = title
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        Ok(format!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{escaped_title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n"
        ))
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;\
padding:0 1em;color:#222}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid \
#ccc;padding:.3em .7em;text-align:right}th{background:#f4f4f4}td:first-child,th:first-child\
{text-align:left}img{max-width:100%;border:1px solid #eee}pre{background:#f7f7f7;padding:1em;\
overflow-x:auto}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_embeds_images_and_renders_tables() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.png"), b"\x89PNG fake").unwrap();
        let mut p = Page::new("T & co");
        p.table(&["x".into(), "y".into()], &[vec!["1".into(), "a|b".into()]]);
        p.image("chart", "a.png");
        let html = p.html("T & co", dir.path()).unwrap();
        assert!(html.contains("<title>T &amp; co</title>"));
        assert!(html.contains("<td>a|b</td>"), "{html}");
        let uri = format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(b"\x89PNG fake")
        );
        assert!(html.contains(&uri), "{html}");
        assert!(!html.contains("src=\"a.png\""));
    }

    #[test]
    fn a_missing_image_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Page::new("t");
        p.image("chart", "gone.png");
        let e = p.html("t", dir.path()).unwrap_err().to_string();
        assert!(e.contains("gone.png"), "{e}");
    }
}
