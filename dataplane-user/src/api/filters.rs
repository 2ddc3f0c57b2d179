//! Docker's list filters (`ps --filter`, `network ls --filter`,
//! `network prune --filter`): `KEY=VALUE` on the command line, a JSON
//! object of `KEY -> [VALUE...]` (or Docker's older `KEY -> {VALUE: true}`)
//! in the `filters` query parameter. Values of one key are alternatives;
//! different keys must all match; every `label` must match.

use std::collections::BTreeMap;

use serde_json::Value;

use super::error::{bad, ApiResult};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters(BTreeMap<String, Vec<String>>);

/// The keys `ps --filter` takes.
pub const CONTAINER_KEYS: &[&str] = &["id", "name", "network", "status", "label", "runtime"];
/// The keys `network ls --filter` takes.
pub const NETWORK_KEYS: &[&str] = &["id", "name", "driver", "scope", "type", "label"];
/// The keys `network prune --filter` takes.
pub const PRUNE_KEYS: &[&str] = &["label"];

/// The container states `--filter status=` knows (Docker's list).
const STATUSES: &[&str] = &[
    "created",
    "restarting",
    "running",
    "removing",
    "paused",
    "exited",
    "dead",
];

impl Filters {
    /// Parses `KEY=VALUE` arguments (the CLI's `--filter`).
    pub fn from_args(args: &[String]) -> Result<Self, String> {
        let mut f = Filters::default();
        for a in args {
            let (k, v) = a
                .split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| format!("bad format of filter (expected name=value): {a}"))?;
            f.0.entry(k.to_ascii_lowercase())
                .or_default()
                .push(v.to_string());
        }
        Ok(f)
    }

    /// Parses the `filters` query parameter and checks its keys.
    pub fn from_query(q: Option<&str>, keys: &[&str]) -> ApiResult<Self> {
        let Some(q) = q.filter(|q| !q.trim().is_empty()) else {
            return Ok(Filters::default());
        };
        let v: Value =
            serde_json::from_str(q).map_err(|e| bad(format!("invalid filters {q:?}: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| bad(format!("invalid filters {q:?}: expected a JSON object")))?;
        let mut f = Filters::default();
        for (k, vals) in obj {
            let list: Vec<String> = match vals {
                Value::Array(a) => a.iter().map(text).collect::<ApiResult<_>>()?,
                Value::Object(m) => m.keys().cloned().collect(),
                Value::String(s) => vec![s.clone()],
                other => return Err(bad(format!("invalid filter value for {k}: {other}"))),
            };
            f.0.insert(k.clone(), list);
        }
        f.check(keys)?;
        Ok(f)
    }

    /// Refuses keys outside `keys` (Docker's `invalid filter 'foo'`) and
    /// statuses Docker does not know.
    pub fn check(&self, keys: &[&str]) -> ApiResult<()> {
        if let Some(k) = self.0.keys().find(|k| !keys.contains(&k.as_str())) {
            return Err(bad(format!("invalid filter '{k}'")));
        }
        if let Some(s) = self
            .values("status")
            .iter()
            .find(|s| !STATUSES.contains(&s.as_str()))
        {
            return Err(bad(format!(
                "invalid filter 'status={s}' (one of {})",
                STATUSES.join(", ")
            )));
        }
        Ok(())
    }

    /// The JSON of the `filters` query parameter ("" when empty).
    pub fn to_query(&self) -> String {
        if self.0.is_empty() {
            String::new()
        } else {
            serde_json::to_string(&self.0).expect("a map of strings")
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `key` was given.
    pub fn has(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    fn values(&self, key: &str) -> &[String] {
        self.0.get(key).map_or(&[], Vec::as_slice)
    }

    /// Whether `key` is absent or one of its values satisfies `pred`.
    pub fn any(&self, key: &str, pred: impl Fn(&str) -> bool) -> bool {
        let v = self.values(key);
        v.is_empty() || v.iter().any(|x| pred(x))
    }

    /// `name=`: regular expressions matched anywhere in the name, as
    /// Docker does (`name=^web$` for an exact name), compiled once for a
    /// whole listing. A value that is not a valid expression is matched as
    /// plain text.
    pub fn name_matcher(&self) -> impl Fn(&str) -> bool + '_ {
        let pats: Vec<(&str, Option<regex::Regex>)> = self
            .values("name")
            .iter()
            .map(|p| (p.as_str(), regex::Regex::new(p).ok()))
            .collect();
        move |name| {
            pats.is_empty()
                || pats.iter().any(|(p, re)| match re {
                    Some(re) => re.is_match(name),
                    None => name.contains(p),
                })
        }
    }

    /// [`Self::name_matcher`] for one name.
    pub fn name(&self, name: &str) -> bool {
        self.name_matcher()(name)
    }

    /// `id=`: a prefix of the full id.
    pub fn id(&self, id: &str) -> bool {
        self.any("id", |p| id.starts_with(p))
    }

    /// Every `label=KEY` or `label=KEY=VALUE` holds.
    pub fn labels(&self, labels: &BTreeMap<String, String>) -> bool {
        self.values("label")
            .iter()
            .all(|l| match l.split_once('=') {
                Some((k, v)) => labels.get(k).is_some_and(|x| x == v),
                None => labels.contains_key(l.as_str()),
            })
    }
}

fn text(v: &Value) -> ApiResult<String> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| bad(format!("invalid filter value {v}: expected a string")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Filters {
        Filters::from_args(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn arguments_round_trip_through_the_query() {
        let f = args(&["name=web", "name=db", "label=tier=front"]);
        let back = Filters::from_query(Some(&f.to_query()), CONTAINER_KEYS).unwrap();
        assert_eq!(back, f);
        // Docker's older map form.
        let old = Filters::from_query(Some(r#"{"name":{"web":true}}"#), CONTAINER_KEYS).unwrap();
        assert_eq!(old, args(&["name=web"]));
        assert!(Filters::from_query(None, CONTAINER_KEYS)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn bad_filters_are_refused_with_docker_words() {
        let e = Filters::from_query(Some(r#"{"foo":["x"]}"#), CONTAINER_KEYS).unwrap_err();
        assert_eq!(e.to_string(), "invalid filter 'foo'");
        let e = Filters::from_query(Some(r#"{"status":["up"]}"#), CONTAINER_KEYS).unwrap_err();
        assert!(
            e.to_string().starts_with("invalid filter 'status=up'"),
            "{e}"
        );
        assert!(Filters::from_query(Some("[1]"), CONTAINER_KEYS).is_err());
        assert!(Filters::from_query(Some("{"), CONTAINER_KEYS).is_err());
        assert!(Filters::from_query(Some(r#"{"name":[1]}"#), CONTAINER_KEYS).is_err());
        assert!(Filters::from_args(&["name".into()]).is_err());
        assert!(Filters::from_args(&["=x".into()]).is_err());
    }

    #[test]
    fn names_match_as_docker_matches_them() {
        let f = args(&["name=web"]);
        assert!(f.name("web") && f.name("my-web-1") && !f.name("db"));
        let exact = args(&["name=^web$"]);
        assert!(exact.name("web") && !exact.name("web2"));
        // Alternatives of one key.
        let either = args(&["name=^web$", "name=^db$"]);
        assert!(either.name("db") && !either.name("cache"));
        // Not a valid expression: plain text.
        assert!(args(&["name=a("]).name("xa(y"));
        assert!(Filters::default().name("anything"));
    }

    #[test]
    fn every_label_must_hold() {
        let labels: BTreeMap<String, String> = [
            ("tier".to_string(), "front".to_string()),
            ("x".into(), "".into()),
        ]
        .into();
        assert!(args(&["label=tier"]).labels(&labels));
        assert!(args(&["label=tier=front", "label=x"]).labels(&labels));
        assert!(!args(&["label=tier=back"]).labels(&labels));
        assert!(!args(&["label=tier", "label=nope"]).labels(&labels));
        assert!(args(&["id=ab"]).id("abcdef") && !args(&["id=bc"]).id("abcdef"));
    }
}
