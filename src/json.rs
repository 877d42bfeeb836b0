//! JSON text for the reports (`doctor --json`, `load --json`): strings
//! escaped as RFC 8259 asks; numbers and structure are the callers'.

use std::fmt::Write as _;

/// Appends `s` to `out` as a JSON string, quotes included.
pub fn push_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes() {
        let mut out = String::new();
        super::push_str(&mut out, "a\"b\\\n\u{1}é");
        assert_eq!(out, "\"a\\\"b\\\\\\u000a\\u0001é\"");
    }
}
