use std::collections::HashMap;

use serde_json::json;

use super::*;

fn env(vars: &[(&str, &str)]) -> CniResultOf<Env> {
    let m: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Env::parse(|k| m.get(k).cloned())
}

const ADD: &[(&str, &str)] = &[
    ("CNI_COMMAND", "ADD"),
    ("CNI_CONTAINERID", "abc123"),
    ("CNI_NETNS", "/run/netns/x"),
    ("CNI_IFNAME", "eth0"),
    ("CNI_PATH", "/opt/cni/bin"),
];

#[test]
fn env_for_add_needs_container_netns_and_ifname() {
    let e = env(ADD).unwrap();
    assert_eq!(e.command, Command::Add);
    assert_eq!(e.attachment_id(), "abc123:eth0");
    for missing in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_COMMAND"] {
        let vars: Vec<_> = ADD.iter().copied().filter(|(k, _)| *k != missing).collect();
        let err = env(&vars).unwrap_err();
        assert_eq!(err.code, code::INVALID_ENV, "{missing}: {err}");
        assert!(err.msg.contains(missing), "{missing}: {err}");
    }
}

#[test]
fn env_for_del_may_lack_the_netns_and_version_gc_status_need_nothing() {
    let e = env(&[
        ("CNI_COMMAND", "DEL"),
        ("CNI_CONTAINERID", "abc"),
        ("CNI_IFNAME", "eth1"),
    ])
    .unwrap();
    assert_eq!((e.command, e.netns.as_str()), (Command::Del, ""));
    for cmd in ["VERSION", "GC", "STATUS"] {
        assert!(env(&[("CNI_COMMAND", cmd)]).is_ok(), "{cmd}");
    }
    let err = env(&[("CNI_COMMAND", "UPDATE")]).unwrap_err();
    assert_eq!(err.code, code::INVALID_ENV);
}

#[test]
fn env_refuses_bad_ids_ifnames_and_args() {
    let with = |k: &str, v: &str| {
        let mut vars: Vec<_> = ADD.iter().copied().filter(|(x, _)| *x != k).collect();
        vars.push((k, v));
        env(&vars)
    };
    for bad in ["-abc", "a/b", "a b", "a:b"] {
        assert_eq!(
            with("CNI_CONTAINERID", bad).unwrap_err().code,
            code::INVALID_ENV
        );
    }
    for bad in ["eth0/1", "a:b", "sixteen-chars-xx", "..", "a b"] {
        assert_eq!(with("CNI_IFNAME", bad).unwrap_err().code, code::INVALID_ENV);
    }
    assert_eq!(
        with("CNI_ARGS", "IgnoreUnknown=1;bogus").unwrap_err().code,
        code::INVALID_ENV
    );
    let e = with("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.1.0.9;;").unwrap();
    assert_eq!(e.arg("K8S_POD_NAME"), Some("web"));
    assert_eq!(e.arg("IP"), Some("10.1.0.9"));
    assert_eq!(e.arg("nope"), None);
}

#[test]
fn versions_compare_numerically() {
    assert_eq!(parse_version("1.10.0"), Some((1, 10, 0)));
    assert_eq!(parse_version("1.0"), None);
    assert_eq!(parse_version("1.0.0.0"), None);
    assert!(at_least("1.10.0", "1.9.0"));
    assert!(!at_least("0.4.0", "1.0.0"));
    assert!(!at_least("junk", "0.1.0"));
    assert_eq!(version_info()["supportedVersions"][4], "1.1.0");
}

#[test]
fn config_parses_with_defaults() {
    let c = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"podnet","type":"dataplane-cni"}"#)
        .unwrap();
    assert_eq!(c.network, "podnet");
    assert_eq!(c.subnet, None);
    assert!(c.prev_result.is_none());
    let c = NetConf::parse(
        br#"{"cniVersion":"0.4.0","name":"n","type":"dataplane-cni","network":"app",
             "subnet":"10.77.0.0/24","socket":"/tmp/s.sock","ipam":{},"dns":{},
             "capabilities":{"portMappings":true},
             "runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":""},
                                              {"hostPort":5353,"containerPort":53,"protocol":"UDP","hostIP":"127.0.0.1"}],
                              "ips":["10.77.0.9/24"],"bandwidth":{}}}"#,
    )
    .unwrap();
    assert_eq!(c.network, "app");
    assert_eq!(c.subnet.as_deref(), Some("10.77.0.0/24"));
    assert_eq!(c.socket.as_deref(), Some("/tmp/s.sock"));
    assert_eq!(
        c.publish().unwrap(),
        vec![
            Publish {
                udp: false,
                host_ip: None,
                host_port: 8080,
                container_port: 80
            },
            Publish {
                udp: true,
                host_ip: Some(Ipv4Addr::new(127, 0, 0, 1)),
                host_port: 5353,
                container_port: 53
            },
        ]
    );
    let e = env(ADD).unwrap();
    assert_eq!(
        c.requested_ip(&e).unwrap(),
        Some(Ipv4Addr::new(10, 77, 0, 9))
    );
}

#[test]
fn config_errors_carry_the_specs_codes() {
    let cases: &[(&[u8], u32)] = &[
        (b"{not json", code::DECODE),
        (b"[1,2]", code::DECODE),
        (br#"{"name":"n"}"#, code::INCOMPATIBLE_VERSION),
        (
            br#"{"cniVersion":"9.9.9","name":"n"}"#,
            code::INCOMPATIBLE_VERSION,
        ),
        (
            br#"{"cniVersion":"0.2.0","name":"n"}"#,
            code::INCOMPATIBLE_VERSION,
        ),
        (br#"{"cniVersion":1,"name":"n"}"#, code::INVALID_CONFIG),
        (br#"{"cniVersion":"1.0.0"}"#, code::INVALID_CONFIG),
        (
            br#"{"cniVersion":"1.0.0","name":"n","subnet":"10.0.0.0/33"}"#,
            code::INVALID_CONFIG,
        ),
        (
            br#"{"cniVersion":"1.0.0","name":"n","network":7}"#,
            code::INVALID_CONFIG,
        ),
        (
            br#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"portMappings":[{"hostPort":"x"}]}}"#,
            code::INVALID_CONFIG,
        ),
        (
            br#"{"cniVersion":"1.0.0","name":"n","prevResult":{"ip4":{"ip":"10.0.0.2/24"}}}"#,
            code::INCOMPATIBLE_VERSION,
        ),
        (
            br#"{"cniVersion":"1.0.0","name":"n","prevResult":{"ips":[{"address":7}]}}"#,
            code::DECODE,
        ),
    ];
    for (conf, want) in cases {
        let err = NetConf::parse(conf).unwrap_err();
        assert_eq!(err.code, *want, "{}: {err}", String::from_utf8_lossy(conf));
    }
    assert_eq!(answer_version(br#"{"cniVersion":"0.3.1"}"#), "0.3.1");
    assert_eq!(answer_version(br#"{"cniVersion":"7.0.0"}"#), OUR_VERSION);
    assert_eq!(answer_version(b"junk"), OUR_VERSION);
}

#[test]
fn bad_port_mappings_and_addresses_are_refused() {
    let pm = |proto: &str, ip: &str, cport: u16| CniPortMapping {
        host_port: 80,
        container_port: cport,
        protocol: proto.into(),
        host_ip: ip.into(),
    };
    assert_eq!(
        pm("sctp", "", 80).check().unwrap_err().code,
        code::UNSUPPORTED_FIELD
    );
    assert_eq!(
        pm("tcp", "::1", 80).check().unwrap_err().code,
        code::UNSUPPORTED_FIELD
    );
    assert!(pm("tcp", "nope", 80).check().is_err());
    assert!(pm("tcp", "", 0).check().is_err());
    assert_eq!(pm("", "0.0.0.0", 80).check().unwrap().host_ip, None);

    let e = env(ADD).unwrap();
    let conf = |ips: &str| {
        NetConf::parse(
            format!(r#"{{"cniVersion":"1.0.0","name":"n","runtimeConfig":{{"ips":{ips}}}}}"#)
                .as_bytes(),
        )
        .unwrap()
    };
    assert_eq!(conf("[]").requested_ip(&e).unwrap(), None);
    assert_eq!(
        conf(r#"["fd00::1/64"]"#).requested_ip(&e).unwrap_err().code,
        code::UNSUPPORTED_FIELD
    );
    for bad in [r#"["10.0.0.1","10.0.0.2"]"#, r#"["x"]"#] {
        assert_eq!(
            conf(bad).requested_ip(&e).unwrap_err().code,
            code::INVALID_CONFIG,
            "{bad}"
        );
    }
    // args.cni.ips, then CNI_ARGS IP=.
    let c =
        NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","args":{"cni":{"ips":["10.0.0.7"]}}}"#)
            .unwrap();
    assert_eq!(
        c.requested_ip(&e).unwrap(),
        Some(Ipv4Addr::new(10, 0, 0, 7))
    );
    let mut e2 = e.clone();
    e2.args = parse_cni_args("IP=10.0.0.8/24").unwrap();
    assert_eq!(
        conf("[]").requested_ip(&e2).unwrap(),
        Some(Ipv4Addr::new(10, 0, 0, 8))
    );
}

fn ours() -> CniResult {
    attachment_result(
        "eth0",
        "02:42:0a:01:00:05",
        "/run/netns/x",
        Ipv4Addr::new(10, 1, 0, 5),
        24,
        Ipv4Addr::new(10, 1, 0, 1),
        false,
        vec!["127.0.0.11".into()],
    )
}

#[test]
fn results_are_written_in_the_configs_version() {
    let r = ours();
    let v1 = r.to_json("1.0.0");
    assert_eq!(
        v1,
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "mac": "02:42:0a:01:00:05", "sandbox": "/run/netns/x"}],
            "ips": [{"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}],
            "dns": {"nameservers": ["127.0.0.11"]},
        })
    );
    for old in ["0.4.0", "0.3.1", "0.3.0"] {
        let v = r.to_json(old);
        assert_eq!(v["cniVersion"], old);
        assert_eq!(v["ips"][0]["version"], "4", "{old}");
        assert_eq!(v["ips"][0]["address"], "10.1.0.5/24");
        assert_eq!(v["interfaces"], v1["interfaces"]);
    }
    // Reading our own answer back gives the same result, in every shape.
    for v in SUPPORTED_VERSIONS {
        assert_eq!(CniResult::from_json(&r.to_json(v)).unwrap(), r, "{v}");
    }
    // An internal network: no default route.
    let internal = attachment_result(
        "eth0",
        "",
        "/n",
        Ipv4Addr::new(10, 1, 0, 5),
        24,
        Ipv4Addr::new(10, 1, 0, 1),
        true,
        vec![],
    );
    let v = internal.to_json("1.0.0");
    assert!(v.get("routes").is_none() && v.get("dns").is_none(), "{v}");
    assert!(v["interfaces"][0].get("mac").is_none());
}

#[test]
fn route_fields_of_1_1_survive_only_in_1_1() {
    let prev = CniResult::from_json(&json!({
        "cniVersion": "1.1.0",
        "routes": [{"dst": "10.9.0.0/16", "gw": "10.1.0.254", "mtu": 1400, "table": 10}],
    }))
    .unwrap();
    assert_eq!(prev.to_json("1.1.0")["routes"][0]["mtu"], 1400);
    assert_eq!(
        prev.to_json("1.0.0")["routes"][0],
        json!({"dst": "10.9.0.0/16", "gw": "10.1.0.254"})
    );
}

#[test]
fn chaining_appends_our_interface_and_address_to_the_previous_result() {
    let prev = CniResult::from_json(&json!({
        "cniVersion": "0.4.0",
        "interfaces": [{"name": "net1", "sandbox": "/run/netns/x"}, {"name": "host-side"}],
        "ips": [{"version": "4", "address": "192.168.5.2/24", "interface": 0}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "192.168.5.1"}],
        "dns": {"nameservers": ["192.168.5.1"], "search": ["example"]},
    }))
    .unwrap();
    let r = CniResult::chain(Some(prev), ours());
    let v = r.to_json("0.4.0");
    assert_eq!(v["interfaces"].as_array().unwrap().len(), 3);
    assert_eq!(v["interfaces"][2]["name"], "eth0");
    assert_eq!(v["ips"][0]["interface"], 0);
    assert_eq!(v["ips"][1]["address"], "10.1.0.5/24");
    assert_eq!(v["ips"][1]["interface"], 2);
    // The previous default route stays; ours (same dst) is not added twice.
    assert_eq!(
        v["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "192.168.5.1"}])
    );
    assert_eq!(
        v["dns"],
        json!({"nameservers": ["192.168.5.1", "127.0.0.11"], "search": ["example"]})
    );
    assert_eq!(CniResult::chain(None, ours()), ours());
}

#[test]
fn error_objects_have_the_specs_fields() {
    let e = CniError::new(code::TRY_AGAIN_LATER, "the daemon is not answering")
        .with_details("connect: no such file");
    assert_eq!(
        e.to_json("0.4.0"),
        json!({"cniVersion": "0.4.0", "code": 11, "msg": "the daemon is not answering",
               "details": "connect: no such file"})
    );
    assert!(CniError::new(7, "x")
        .to_json("1.0.0")
        .get("details")
        .is_none());
}

#[test]
fn gc_lists_the_attachments_still_in_use() {
    let c = NetConf::parse(
        br#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":
            [{"containerID":"aaa","ifname":"eth0"},{"containerID":"bbb","ifname":"net1"}]}"#,
    )
    .unwrap();
    assert_eq!(
        c.valid_ids().unwrap().into_iter().collect::<Vec<_>>(),
        vec!["aaa:eth0", "bbb:net1"]
    );
    let none = NetConf::parse(br#"{"cniVersion":"1.1.0","name":"n"}"#).unwrap();
    assert_eq!(none.valid_ids().unwrap_err().code, code::INVALID_CONFIG);
    assert_eq!(
        NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{"x":1}]}"#
        )
        .unwrap_err()
        .code,
        code::INVALID_CONFIG
    );
}
