//! `--format` as Docker's CLI takes it: `table` (the default), `json`, a Go
//! template (`'{{.Names}}'`, rendered by the gtmpl crate with Docker's
//! template functions), or `table TEMPLATE` for aligned columns under a
//! header row.

use std::{collections::HashMap, str::FromStr};

use anyhow::{anyhow, Result};
use gtmpl::{Context, Func, FuncError, Template, Value as T};
use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Format {
    /// The command's own columns.
    #[default]
    Table,
    /// JSON (one object per line where Docker prints it so).
    Json,
    /// A Go template rendered once per item; `table` adds a header row and
    /// aligns the tab-separated cells.
    Template { text: String, table: bool },
}

impl FromStr for Format {
    type Err = String;

    /// Parses and checks a `--format` value (a template that does not
    /// parse is refused here, before any request).
    fn from_str(s: &str) -> Result<Self, String> {
        let f = match s.trim() {
            "" | "table" => Format::Table,
            "json" => Format::Json,
            t => match t.strip_prefix("table ") {
                Some(rest) => Format::Template {
                    text: unescape(rest),
                    table: true,
                },
                None => Format::Template {
                    text: unescape(t),
                    table: false,
                },
            },
        };
        if let Format::Template { text, .. } = &f {
            template(text).map_err(|e| format!("template parsing error: {e}"))?;
        }
        Ok(f)
    }
}

/// Docker turns a typed `\t` and `\n` into a tab and a newline.
fn unescape(s: &str) -> String {
    s.replace("\\t", "\t").replace("\\n", "\n")
}

/// The functions Docker's templates have beyond Go's own.
const FUNCS: &[(&str, Func)] = &[
    ("json", json_fn),
    ("join", join_fn),
    ("split", split_fn),
    ("lower", lower_fn),
    ("upper", upper_fn),
    ("title", title_fn),
    ("truncate", truncate_fn),
    ("pad", pad_fn),
];

fn template(text: &str) -> Result<Template> {
    let mut t = Template::default();
    t.add_funcs(FUNCS);
    t.parse(text).map_err(|e| anyhow!("{e}"))?;
    Ok(t)
}

/// Renders `text` once for each item.
pub fn render_each(text: &str, items: &[Value]) -> Result<Vec<String>> {
    let t = template(text)?;
    items
        .iter()
        .map(|v| {
            t.render(&Context::from(to_template(v, false)))
                .map_err(|e| anyhow!("template: {e}"))
        })
        .collect()
}

/// Prints `items` under `text`: one rendering per item, or with `table`
/// a header row (each field named by `header`) and aligned cells.
pub fn print_template(
    text: &str,
    table: bool,
    items: &[Value],
    header: impl Fn(&str) -> String,
) -> Result<()> {
    let rows = render_each(text, items)?;
    if !table {
        for r in rows {
            println!("{r}");
        }
        return Ok(());
    }
    // The header row: the same template over an object whose every field
    // holds its column's title.
    let mut fields: Vec<String> = items
        .iter()
        .filter_map(Value::as_object)
        .flat_map(|o| o.keys().cloned())
        .collect();
    fields.extend(fields_in(text));
    let titles: serde_json::Map<String, Value> = fields
        .into_iter()
        .map(|f| {
            let h = header(&f);
            (f, Value::String(h))
        })
        .collect();
    let head = render_each(text, &[Value::Object(titles)])
        .ok()
        .and_then(|mut h| h.pop());
    let lines: Vec<String> = head.into_iter().chain(rows).collect();
    for l in align(&lines) {
        println!("{l}");
    }
    Ok(())
}

/// The top-level fields a template names (`{{.Names}}` gives `Names`), so
/// the header row has them even with no items.
fn fields_in(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find('.') {
        rest = &rest[i + 1..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if name.chars().next().is_some_and(|c| c.is_ascii_uppercase()) {
            out.push(name);
        }
    }
    out
}

/// Docker's column titles: `CreatedAt` reads `CREATED AT`.
pub fn title_of(field: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = field.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        let lower = |j: usize| chars.get(j).is_some_and(|n| n.is_lowercase());
        // A word starts after a lower-case letter, or ends an acronym
        // (`IPAddress`), but `IPv6` stays one word.
        let starts = (i > 0 && lower(i - 1)) || (i > 0 && lower(i + 1) && lower(i + 2));
        if c.is_uppercase() && starts {
            out.push(' ');
        }
        out.extend(c.to_uppercase());
    }
    out
}

/// Aligns tab-separated cells as Docker's tabwriter does (columns at least
/// 10 wide, 3 spaces between them).
pub fn align(lines: &[String]) -> Vec<String> {
    let split: Vec<Vec<&str>> = lines.iter().map(|l| l.split('\t').collect()).collect();
    let mut widths: Vec<usize> = Vec::new();
    for cells in &split {
        // The last cell of a line is not a column.
        for (i, c) in cells.iter().enumerate().take(cells.len().saturating_sub(1)) {
            let w = c.chars().count() + 3;
            if widths.len() <= i {
                widths.push(10);
            }
            widths[i] = widths[i].max(w);
        }
    }
    split
        .iter()
        .map(|cells| {
            let mut s = String::new();
            for (i, c) in cells.iter().enumerate() {
                if i + 1 < cells.len() {
                    s.push_str(&format!("{c:<w$}", w = widths[i]));
                } else {
                    s.push_str(c);
                }
            }
            s.trim_end().to_string()
        })
        .collect()
}

/// JSON objects become template objects (a missing field is an error, as
/// for Go structs), except the maps Docker keeps as Go maps (labels,
/// options, networks, ports), where a missing key reads `<no value>`.
fn to_template(v: &Value, as_map: bool) -> T {
    match v {
        Value::Null => T::Nil,
        Value::Bool(b) => T::Bool(*b),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                T::from(u)
            } else if let Some(i) = n.as_i64() {
                T::from(i)
            } else {
                T::from(n.as_f64().unwrap_or(0.0))
            }
        }
        Value::String(s) => T::String(s.clone()),
        Value::Array(a) => T::Array(a.iter().map(|x| to_template(x, false)).collect()),
        Value::Object(o) => {
            let m: HashMap<String, T> = o
                .iter()
                .map(|(k, x)| (k.clone(), to_template(x, is_go_map(k))))
                .collect();
            if as_map {
                T::Map(m)
            } else {
                T::Object(m)
            }
        }
    }
}

fn is_go_map(key: &str) -> bool {
    matches!(
        key,
        "Labels"
            | "Options"
            | "Networks"
            | "Ports"
            | "ExposedPorts"
            | "PortBindings"
            | "Containers"
            | "AuxiliaryAddresses"
    )
}

fn from_template(v: &T) -> Value {
    match v {
        T::NoValue | T::Nil | T::Function(_) => Value::Null,
        T::Bool(b) => Value::Bool(*b),
        T::String(s) => Value::String(s.clone()),
        T::Number(n) => n
            .as_u64()
            .map(Value::from)
            .or_else(|| n.as_i64().map(Value::from))
            .unwrap_or_else(|| Value::from(n.as_f64().unwrap_or(0.0))),
        T::Array(a) => Value::Array(a.iter().map(from_template).collect()),
        T::Object(o) | T::Map(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), from_template(x)))
                .collect(),
        ),
    }
}

fn arg<'a>(args: &'a [T], i: usize, name: &str, n: usize) -> Result<&'a T, FuncError> {
    if args.len() != n {
        return Err(FuncError::ExactlyXArgs(name.into(), n));
    }
    Ok(&args[i])
}

fn text(v: &T) -> String {
    match v {
        T::String(s) => s.clone(),
        T::NoValue | T::Nil => String::new(),
        other => other.to_string(),
    }
}

fn int(v: &T, name: &str) -> Result<usize, FuncError> {
    match v {
        T::Number(n) => n
            .as_u64()
            .map(|u| u as usize)
            .ok_or_else(|| FuncError::Generic(format!("{name}: expected a count, got {n}"))),
        other => Err(FuncError::Generic(format!(
            "{name}: expected a number, got {other}"
        ))),
    }
}

fn json_fn(args: &[T]) -> Result<T, FuncError> {
    let v = arg(args, 0, "json", 1)?;
    serde_json::to_string(&from_template(v))
        .map(T::String)
        .map_err(|e| FuncError::Generic(e.to_string()))
}

fn join_fn(args: &[T]) -> Result<T, FuncError> {
    let list = arg(args, 0, "join", 2)?;
    let sep = text(&args[1]);
    let items: Vec<String> = match list {
        T::Array(a) => a.iter().map(text).collect(),
        other => vec![text(other)],
    };
    Ok(T::String(items.join(&sep)))
}

fn split_fn(args: &[T]) -> Result<T, FuncError> {
    let s = text(arg(args, 0, "split", 2)?);
    let sep = text(&args[1]);
    Ok(T::Array(
        s.split(sep.as_str())
            .map(|p| T::String(p.to_string()))
            .collect(),
    ))
}

fn lower_fn(args: &[T]) -> Result<T, FuncError> {
    Ok(T::String(text(arg(args, 0, "lower", 1)?).to_lowercase()))
}

fn upper_fn(args: &[T]) -> Result<T, FuncError> {
    Ok(T::String(text(arg(args, 0, "upper", 1)?).to_uppercase()))
}

fn title_fn(args: &[T]) -> Result<T, FuncError> {
    let s = text(arg(args, 0, "title", 1)?);
    let mut out = String::new();
    let mut start = true;
    for c in s.chars() {
        if start {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        start = !c.is_alphanumeric();
    }
    Ok(T::String(out))
}

fn truncate_fn(args: &[T]) -> Result<T, FuncError> {
    let s = text(arg(args, 0, "truncate", 2)?);
    let n = int(&args[1], "truncate")?;
    Ok(T::String(s.chars().take(n).collect()))
}

fn pad_fn(args: &[T]) -> Result<T, FuncError> {
    let s = text(arg(args, 0, "pad", 3)?);
    let (l, r) = (int(&args[1], "pad")?, int(&args[2], "pad")?);
    Ok(T::String(format!("{}{s}{}", " ".repeat(l), " ".repeat(r))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(text: &str, v: Value) -> String {
        render_each(text, &[v]).unwrap().remove(0)
    }

    #[test]
    fn formats_parse_as_docker_reads_them() {
        assert_eq!("table".parse::<Format>(), Ok(Format::Table));
        assert_eq!("json".parse::<Format>(), Ok(Format::Json));
        assert_eq!(
            "table {{.ID}}\\t{{.Names}}".parse::<Format>(),
            Ok(Format::Template {
                text: "{{.ID}}\t{{.Names}}".into(),
                table: true
            })
        );
        let e = "{{.Names".parse::<Format>().unwrap_err();
        assert!(e.starts_with("template parsing error"), "{e}");
        assert!("{{nosuchfunc .X}}".parse::<Format>().is_err());
    }

    #[test]
    fn templates_reach_into_inspect_output() {
        let v = json!({
            "Name": "web", "State": {"Running": true, "Pid": 42},
            "NetworkSettings": {"IPAddress": "172.17.0.2",
                "Networks": {"app": {"IPAddress": "10.0.0.2", "Aliases": ["w", "abc"]}}},
            "Config": {"Labels": {"tier": "front"}},
        });
        assert_eq!(
            one("{{.NetworkSettings.IPAddress}}", v.clone()),
            "172.17.0.2"
        );
        assert_eq!(
            one(
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                v.clone()
            ),
            "10.0.0.2"
        );
        assert_eq!(
            one(
                r#"{{(index .NetworkSettings.Networks "app").IPAddress}}"#,
                v.clone()
            ),
            "10.0.0.2"
        );
        assert_eq!(
            one(
                "{{.NetworkSettings.Networks.app.Aliases | json}}",
                v.clone()
            ),
            r#"["w","abc"]"#
        );
        assert_eq!(
            one(
                r#"{{join .NetworkSettings.Networks.app.Aliases ","}}"#,
                v.clone()
            ),
            "w,abc"
        );
        assert_eq!(
            one("{{.Config.Labels.tier}} {{.State.Pid}}", v.clone()),
            "front 42"
        );
        // A missing map key reads `<no value>`, a missing field fails.
        assert_eq!(one("{{.Config.Labels.nope}}", v.clone()), "<no value>");
        assert!(render_each("{{.Nope}}", std::slice::from_ref(&v)).is_err());
        assert_eq!(
            one("{{if .State.Running}}up{{else}}down{{end}}", v.clone()),
            "up"
        );
        assert_eq!(one("{{json .State}}", v), r#"{"Pid":42,"Running":true}"#);
    }

    #[test]
    fn dockers_functions_work() {
        let v = json!({"Names": "my-web", "Command": "sleep 1000"});
        assert_eq!(
            one("{{upper .Names}} {{lower \"AB\"}}", v.clone()),
            "MY-WEB ab"
        );
        assert_eq!(one("{{title .Names}}", v.clone()), "My-Web");
        assert_eq!(one("{{truncate .Command 5}}", v.clone()), "sleep");
        assert_eq!(one("[{{pad .Names 1 2}}]", v.clone()), "[ my-web  ]");
        assert_eq!(one(r#"{{index (split .Names "-") 1}}"#, v.clone()), "web");
        assert!(render_each("{{truncate .Names}}", &[v]).is_err());
    }

    #[test]
    fn table_headers_and_alignment() {
        assert_eq!(title_of("Names"), "NAMES");
        assert_eq!(title_of("CreatedAt"), "CREATED AT");
        assert_eq!(title_of("ID"), "ID");
        assert_eq!(title_of("IPv6"), "IPV6");
        let lines = align(&["A\tB\tC".into(), "longer-than-ten\tx\ty".into()]);
        assert_eq!(lines[0], "A                 B         C");
        assert_eq!(lines[1], "longer-than-ten   x         y");
        assert_eq!(fields_in("{{.ID}}\t{{ upper .Names }}"), ["ID", "Names"]);
    }
}
