//! Answers from the local name table, scoped as Docker scopes them: the
//! asking container sees only the entries of the networks it is attached to.

use std::net::{IpAddr, Ipv4Addr};

use hickory_proto::{
    op::Query,
    rr::{
        rdata::{A, PTR},
        DNSClass, Name, RData, Record, RecordType,
    },
};
use rand::seq::SliceRandom as _;

use super::{Names, NetworkNames};

/// TTL of local answers, as Docker's.
const TTL: u32 = 600;

/// The local answer to `query` asked by container `asker`, or `None` when
/// the name is not local and the query must be forwarded.
///
/// A known name answers every type: its addresses for A, nothing (NOERROR)
/// for the others, since the networks are IPv4-only.
pub(super) fn local_answer(names: &Names, asker: &str, query: &Query) -> Option<Vec<Record>> {
    if query.query_class != DNSClass::IN {
        return None;
    }
    if query.query_type == RecordType::PTR {
        if let Some(record) = pointer(names, asker, &query.name) {
            return Some(vec![record]);
        }
    }
    let mut ips = names.addresses(asker, &query.name.to_ascii());
    if ips.is_empty() {
        return None;
    }
    if query.query_type != RecordType::A {
        return Some(Vec::new());
    }
    // Several containers sharing an alias: spread the clients over them.
    ips.shuffle(&mut rand::rng());
    let records = ips
        .into_iter()
        .map(|ip| Record::from_rdata(query.name.clone(), TTL, RData::A(A(ip))))
        .collect();
    Some(records)
}

/// The PTR record for `name` when it is the reverse name of a local IP
/// (`d.c.b.a.in-addr.arpa.`): the container name, as Docker answers.
fn pointer(names: &Names, asker: &str, name: &Name) -> Option<Record> {
    let net = name.parse_arpa_name().ok()?;
    let ip = match net.addr() {
        IpAddr::V4(ip) if net.prefix_len() == 32 => ip,
        _ => return None,
    };
    let target = Name::from_ascii(format!("{}.", names.container_name(asker, ip)?)).ok()?;
    Some(Record::from_rdata(
        name.clone(),
        TTL,
        RData::PTR(PTR(target)),
    ))
}

impl Names {
    /// The networks container `asker` is attached to.
    fn networks_of<'a>(&'a self, asker: &'a str) -> impl Iterator<Item = &'a NetworkNames> {
        self.networks
            .values()
            .filter(move |net| net.entries.iter().any(|e| e.container_id == asker))
    }

    /// The addresses of every entry called `qname` (or `NAME.NETWORK`) on
    /// `asker`'s networks, without duplicates; empty when unknown.
    fn addresses(&self, asker: &str, qname: &str) -> Vec<Ipv4Addr> {
        let qname = without_root(qname);
        let mut ips = Vec::new();
        for (alias, ip) in self.links.get(asker).into_iter().flatten() {
            if qname.eq_ignore_ascii_case(without_root(alias)) && !ips.contains(ip) {
                ips.push(*ip);
            }
        }
        for net in self.networks_of(asker) {
            for entry in &net.entries {
                let known = entry
                    .names
                    .iter()
                    .any(|name| is_named(qname, without_root(name), &net.name));
                if known && !ips.contains(&entry.ip) {
                    ips.push(entry.ip);
                }
            }
        }
        ips
    }

    /// The container name of the entry with address `ip` on `asker`'s
    /// networks.
    fn container_name<'a>(&'a self, asker: &'a str, ip: Ipv4Addr) -> Option<&'a str> {
        self.networks_of(asker)
            .flat_map(|net| &net.entries)
            .filter(|entry| entry.ip == ip)
            .find_map(|entry| entry.names.first())
            .map(|name| without_root(name))
            .filter(|name| !name.is_empty())
    }
}

/// Whether `qname` is `name` or `name.network` (case-insensitive).
fn is_named(qname: &str, name: &str, network: &str) -> bool {
    if name.is_empty() {
        return false;
    }
    if qname.eq_ignore_ascii_case(name) {
        return true;
    }
    let Some((head, tail)) = qname
        .len()
        .checked_sub(network.len())
        .and_then(|at| qname.split_at_checked(at))
    else {
        return false;
    };
    !network.is_empty()
        && tail.eq_ignore_ascii_case(network)
        && head
            .strip_suffix('.')
            .is_some_and(|head| head.eq_ignore_ascii_case(name))
}

/// `name` without the trailing dot of a fully qualified name.
fn without_root(name: &str) -> &str {
    name.strip_suffix('.').unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::NameEntry;

    fn names() -> Names {
        let entry = |id: &str, names: &[&str], ip: [u8; 4]| NameEntry {
            container_id: id.into(),
            names: names.iter().map(|n| n.to_string()).collect(),
            ip: ip.into(),
        };
        let mut table = Names::default();
        table.networks.insert(
            "id-front".into(),
            NetworkNames {
                name: "front".into(),
                entries: vec![
                    entry("asker", &["asker"], [10, 0, 0, 2]),
                    entry("web", &["Web", "webhost", "svc."], [10, 0, 0, 3]),
                ],
            },
        );
        table.networks.insert(
            "id-back".into(),
            NetworkNames {
                name: "back".into(),
                entries: vec![entry("db", &["db"], [10, 0, 1, 3])],
            },
        );
        table
    }

    fn ask(qname: &str, qtype: RecordType) -> Option<Vec<Record>> {
        let query = Query::query(Name::from_ascii(qname).unwrap(), qtype);
        local_answer(&names(), "asker", &query)
    }

    fn a_records(records: &[Record]) -> Vec<Ipv4Addr> {
        records
            .iter()
            .map(|r| match r.data {
                RData::A(A(ip)) => ip,
                ref other => panic!("not an A record: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn names_match_in_any_case_with_or_without_network() {
        for qname in ["web.", "WEB", "webhost.", "svc", "web.front.", "Web.FRONT"] {
            let answer = ask(qname, RecordType::A).unwrap_or_else(|| panic!("{qname}"));
            assert_eq!(a_records(&answer), [Ipv4Addr::new(10, 0, 0, 3)], "{qname}");
            assert_eq!(answer[0].ttl, TTL);
        }
    }

    #[test]
    fn other_networks_and_near_misses_are_not_local() {
        for qname in [
            "db.",
            "db.back.",
            "web.back.",
            "web.fron.",
            "webfront.",
            "x.web.front.",
        ] {
            assert!(ask(qname, RecordType::A).is_none(), "{qname}");
        }
    }

    #[test]
    fn known_names_answer_other_types_empty() {
        assert_eq!(ask("web.", RecordType::AAAA).unwrap().len(), 0);
        assert_eq!(ask("web.", RecordType::MX).unwrap().len(), 0);
    }

    #[test]
    fn reverse_lookup_of_local_ips_only() {
        let answer = ask("3.0.0.10.in-addr.arpa.", RecordType::PTR).unwrap();
        assert_eq!(
            answer[0].data,
            RData::PTR(PTR(Name::from_ascii("Web.").unwrap()))
        );
        assert!(ask("3.1.0.10.in-addr.arpa.", RecordType::PTR).is_none());
        assert!(ask("0.10.in-addr.arpa.", RecordType::PTR).is_none());
    }

    #[test]
    fn link_aliases_resolve_for_the_linking_container_only() {
        let mut table = names();
        table.links.insert(
            "asker".into(),
            vec![("database".into(), Ipv4Addr::new(10, 0, 0, 3))],
        );
        let query = Query::query(Name::from_ascii("Database.").unwrap(), RecordType::A);
        let answer = local_answer(&table, "asker", &query).expect("the linker resolves its alias");
        assert_eq!(a_records(&answer), [Ipv4Addr::new(10, 0, 0, 3)]);
        assert!(
            local_answer(&table, "web", &query).is_none(),
            "nobody else does"
        );
    }

    #[test]
    fn containers_on_no_network_see_nothing() {
        let query = Query::query(Name::from_ascii("web.").unwrap(), RecordType::A);
        assert!(local_answer(&names(), "stranger", &query).is_none());
    }
}
