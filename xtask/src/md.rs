//! Sections of BENCHMARKS.md that a partial run replaces while keeping
//! the rest: a section runs from its `## ` heading to the next one.

/// `doc` without the section whose heading starts with `prefix`, and that
/// section (if there is one).
pub fn split_section(doc: &str, prefix: &str) -> (String, Option<String>) {
    let mut rest = String::new();
    let mut section: Option<String> = None;
    let mut inside = false;
    for line in doc.split_inclusive('\n') {
        let l = line.trim_end();
        if l.starts_with(prefix) {
            inside = true;
            section = Some(String::new());
        } else if inside && l.starts_with("## ") {
            inside = false;
        }
        if inside {
            if let Some(s) = section.as_mut() {
                s.push_str(line);
            }
        } else {
            rest.push_str(line);
        }
    }
    (rest, section)
}

/// A `#### title` list of `items`, one line each (nothing when empty): the
/// failures and notes a benchmark section ends with.
pub fn bullets(o: &mut String, title: &str, items: &[String]) {
    use std::fmt::Write as _;
    if items.is_empty() {
        return;
    }
    let _ = writeln!(o, "#### {title}\n");
    for i in items {
        let _ = writeln!(o, "- {}", i.replace('\n', " "));
    }
    let _ = writeln!(o);
}

/// `doc` with `section` (if any) appended after a blank line.
pub fn append_section(doc: &str, section: Option<&str>) -> String {
    match section {
        None => doc.to_string(),
        Some(s) => {
            let mut out = doc.trim_end().to_string();
            if !out.is_empty() {
                out.push_str("\n\n");
            }
            out.push_str(s.trim_end());
            out.push('\n');
            out
        }
    }
}
