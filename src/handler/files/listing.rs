//! `--dir-listing`: an HTML index of a directory. Names are HTML-escaped in
//! text and percent-encoded in links, so a file called `<script>` is shown,
//! never run. Hidden entries follow `--serve-hidden`.

use std::fmt::Write as _;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;

use percent_encoding::{percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Bytes a link keeps as they are; everything else is %-encoded.
const LINK: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The listing of the open directory `dir`, shown as `title` (the
/// decoded request path).
pub fn render(dir: &File, title: &str, serve_hidden: bool) -> io::Result<String> {
    // Read through the open descriptor, not the path: the directory the
    // listing shows is the one opened beneath the root.
    let proc_path = format!("/proc/self/fd/{}", dir.as_raw_fd());
    let mut names = Vec::new();
    for entry in std::fs::read_dir(proc_path)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.as_bytes().starts_with(b".") && !serve_hidden {
            continue;
        }
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        names.push((name, is_dir));
    }
    names.sort();
    let mut html = String::with_capacity(256 + names.len() * 64);
    let title = escape(title);
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Index of {title}</title></head>\n\
         <body><h1>Index of {title}</h1>\n<ul>\n<li><a href=\"../\">../</a></li>\n"
    );
    for (name, is_dir) in &names {
        let slash = if *is_dir { "/" } else { "" };
        let href = percent_encode(name.as_bytes(), LINK);
        let text = escape(&name.to_string_lossy());
        let _ = writeln!(html, "<li><a href=\"{href}{slash}\">{text}{slash}</a></li>");
    }
    html.push_str("</ul></body></html>\n");
    Ok(html)
}

/// Escapes the five characters that matter in HTML text and attributes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
    }
}
