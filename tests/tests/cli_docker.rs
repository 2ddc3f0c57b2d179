//! Docker's habits on our own CLI, as a Docker 20.10 user types them:
//! Go templates in `--format`/`-f`, `-q`, `-a`, `--no-trunc`, `--filter`,
//! several names to `inspect`, `network prune`, labels, `--attachable`.

use dataplane_tests::{eventually, Daemon};
use serde_json::{json, Value};

/// The lines of a command's stdout, sorted.
fn lines(d: &Daemon, args: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = d
        .ok(args)
        .stdout
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect();
    v.sort();
    v
}

fn strs(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[test]
fn ps_lists_filters_and_formats_as_docker_does() {
    let d = Daemon::start();
    d.network_create(&["--subnet", "10.61.0.0/24", "front"]);
    d.network_create(&["--subnet", "10.62.0.0/24", "back"]);
    let web = d.run_sleeper("web", Some("front"), &["--label", "role=web", "-l", "tier"]);
    let db = d.run_sleeper("db", Some("back"), &[]);
    d.run_cmd("gone", Some("front"), &[], &["true"]);
    eventually("gone to exit", || {
        let s = d.ok(&["ps", "-a", "-f", "name=^gone$", "--format", "{{.State}}"]);
        (s.text() == "exited").then_some(()).ok_or(s.to_string())
    });

    // -q: running containers' short ids; -a: the stopped one too.
    let short = |id: &str| id[..12].to_string();
    assert_eq!(lines(&d, &["ps", "-q"]), strs(&[&short(&web), &short(&db)]));
    assert_eq!(lines(&d, &["ps", "-aq"]).len(), 3);
    assert_eq!(lines(&d, &["ps", "-q", "--no-trunc"]), strs(&[&web, &db]));
    // Filters, alone and together.
    let names = |f: &[&str]| {
        let mut args = vec!["ps", "--format", "{{.Names}}"];
        for x in f {
            args.extend(["--filter", x]);
        }
        lines(&d, &args)
    };
    assert_eq!(names(&["name=web"]), strs(&["web"]));
    assert_eq!(names(&["network=back"]), strs(&["db"]));
    assert_eq!(names(&["label=role=web"]), strs(&["web"]));
    assert_eq!(names(&["label=tier"]), strs(&["web"]));
    assert_eq!(names(&["label=role=db"]), Vec::<String>::new());
    assert_eq!(names(&[&format!("id={}", &web[..6])]), strs(&["web"]));
    // A status filter shows stopped containers without -a, as Docker's.
    assert_eq!(names(&["status=exited"]), strs(&["gone"]));
    assert_eq!(names(&["network=front", "status=running"]), strs(&["web"]));
    assert_eq!(names(&["name=web", "name=db"]), strs(&["db", "web"]));

    // --format json: one object per line with Docker's field names.
    let ps = d.ok(&["ps", "--format", "json"]).json_lines();
    let rows = ps.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{ps:#}");
    let w = rows
        .iter()
        .find(|r| r["Names"] == "web")
        .expect("web listed");
    assert_eq!(w["ID"], short(&web).as_str());
    assert_eq!(w["Networks"], "front");
    assert_eq!(w["State"], "running");
    assert_eq!(w["Command"], "\"sleep infinity\"");
    assert!(w["Status"].as_str().unwrap().starts_with("Up "), "{w:#}");
    assert!(w["Labels"].as_str().unwrap().contains("role=web"), "{w:#}");

    // table TEMPLATE: a header row, aligned cells.
    let t = d.ok(&[
        "ps",
        "--format",
        "table {{.Names}}\\t{{.Networks}}",
        "-f",
        "name=db",
    ]);
    let tl: Vec<&str> = t.stdout.lines().collect();
    assert_eq!(tl, ["NAMES     NETWORKS", "db        back"], "{t}");
    // The default table: Docker's columns.
    let table = d.ok(&["ps", "-a"]).stdout;
    let head = table.lines().next().unwrap();
    for col in [
        "CONTAINER ID",
        "COMMAND",
        "CREATED",
        "STATUS",
        "PORTS",
        "NAMES",
    ] {
        assert!(head.contains(col), "{col} missing: {table}");
    }
    assert!(table.contains("Exited") && table.contains("Up "), "{table}");

    // Bad input: one clear line, nothing printed on stdout.
    for (args, want) in [
        (&["ps", "-f", "foo=bar"][..], "invalid filter 'foo'"),
        (&["ps", "-f", "status=up"], "invalid filter 'status=up'"),
        (&["ps", "-f", "name"], "bad format of filter"),
        (&["ps", "--format", "{{.Names"], "template parsing error"),
    ] {
        let out = d.cli(args);
        let line = out.refused();
        assert!(line.contains(want), "{args:?}: {line}");
        assert_eq!(out.stdout, "", "{args:?}");
    }
    // A field the lines do not have fails the template, not the daemon.
    let out = d.cli(&["ps", "--format", "{{.Nope}}"]);
    assert!(!out.success(), "{out}");
}

#[test]
fn inspect_takes_templates_and_several_names() {
    let d = Daemon::start();
    d.network_create(&["--subnet", "10.63.0.0/24", "app"]);
    // On the default bridge: Docker's top-level addresses.
    d.run_sleeper("web", None, &["--label", "role=web"]);
    let app = d.run_sleeper("api", Some("app"), &["--network-alias", "www"]);
    d.run_sleeper("peer", Some("app"), &[]);

    let ip = d.ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "web"]);
    assert!(ip.text().starts_with("172.17."), "{ip}");
    assert_eq!(ip.text(), d.ip("web", "bridge"));
    let gw = d.ok(&["inspect", "--format", "{{.NetworkSettings.Gateway}}", "web"]);
    assert_eq!(gw.text(), "172.17.0.1");
    let mac = d.ok(&["inspect", "-f", "{{.NetworkSettings.MacAddress}}", "web"]);
    assert!(mac.text().starts_with("02:42:"), "{mac}");
    // Elsewhere the top-level fields are empty, as Docker's.
    let none = d.ok(&["inspect", "-f", "[{{.NetworkSettings.IPAddress}}]", "api"]);
    assert_eq!(none.text(), "[]");
    // Aliases: the network alias and the short id, both answering DNS.
    let aliases = d.ok(&[
        "inspect",
        "-f",
        "{{json .NetworkSettings.Networks.app.Aliases}}",
        "api",
    ]);
    let short = &app[..12];
    assert_eq!(
        serde_json::from_str::<Value>(aliases.text()).unwrap(),
        json!(["www", short])
    );
    d.assert_pings("peer", "www");
    d.assert_pings("peer", short);
    // Labels, index, range.
    let role = d.ok(&["inspect", "-f", "{{.Config.Labels.role}}", "web"]);
    assert_eq!(role.text(), "web");
    let ranged = d.ok(&[
        "inspect",
        "-f",
        "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}={{$v.IPAddress}}{{end}}",
        "api",
    ]);
    assert_eq!(ranged.text(), format!("app={}", d.ip("api", "app")));

    // Several names: one JSON array, or one line each.
    let both = d.ok(&["inspect", "web", "api"]).json();
    assert_eq!(both.as_array().map(Vec::len), Some(2));
    let each = d.ok(&["inspect", "-f", "{{.Name}} {{.State.Status}}", "web", "api"]);
    assert_eq!(each.text(), "web running\napi running");
    // An unknown name among them: the others shown, the error said, exit 1.
    let out = d.cli(&["inspect", "web", "nope"]);
    let line = out.refused();
    assert!(line.contains("nope"), "{line}");
    let shown: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(shown.as_array().map(Vec::len), Some(1), "{out}");
    // A template that does not parse is refused before any request.
    let out = d.cli(&["inspect", "-f", "{{.Name", "web"]);
    assert!(out.refused().contains("template parsing error"), "{out}");
}

#[test]
fn networks_list_filter_inspect_and_prune_as_docker_does() {
    let d = Daemon::start();
    let front = d.network_create(&[
        "--subnet",
        "10.64.0.0/24",
        "--label",
        "tier=front",
        "--label",
        "env",
        "--attachable",
        "front",
    ]);
    d.network_create(&["--subnet", "10.65.0.0/24", "back"]);
    d.network_create(&["--subnet", "10.66.0.0/24", "--label", "x", "spare"]);
    d.run_sleeper("c", Some("back"), &[]);

    // -q and --no-trunc.
    let ids = lines(&d, &["network", "ls", "-q"]);
    assert!(ids.contains(&front[..12].to_string()), "{ids:?}");
    let full = lines(&d, &["network", "ls", "-q", "--no-trunc"]);
    assert!(full.contains(&front), "{full:?}");
    // Filters.
    let names = |f: &str| {
        lines(
            &d,
            &["network", "ls", "--filter", f, "--format", "{{.Name}}"],
        )
    };
    assert_eq!(names("name=front"), strs(&["front"]));
    assert_eq!(names("label=tier=front"), strs(&["front"]));
    assert_eq!(names("label=env"), strs(&["front"]));
    assert_eq!(names("driver=host"), strs(&["host"]));
    assert_eq!(names("type=builtin"), strs(&["bridge", "host", "none"]));
    assert_eq!(names("type=custom"), strs(&["back", "front", "spare"]));
    assert_eq!(names(&format!("id={}", &front[..8])), strs(&["front"]));
    // JSON lines with Docker's fields.
    let ls = d.ok(&["network", "ls", "--format", "json"]).json_lines();
    let f = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["Name"] == "front")
        .cloned()
        .expect("front listed");
    assert_eq!(f["ID"], &front[..12]);
    assert_eq!(f["Driver"], "bridge");
    assert_eq!(f["Labels"], "env=,tier=front");
    // inspect -f.
    let out = d.ok(&[
        "network",
        "inspect",
        "-f",
        "{{.Name}} {{.Attachable}} {{json .Labels}} {{range .IPAM.Config}}{{.Subnet}}{{end}}",
        "front",
        "back",
    ]);
    assert_eq!(
        out.text(),
        "front true {\"env\":\"\",\"tier\":\"front\"} 10.64.0.0/24\nback false {} 10.65.0.0/24"
    );

    // prune: asks first (no answer is no), then removes the unused ones
    // the filter picks, never the default bridge or a network in use.
    let asked = d.cli(&["network", "prune"]);
    assert!(
        asked.success() && asked.stdout.contains("Are you sure"),
        "{asked}"
    );
    assert_eq!(names("type=custom"), strs(&["back", "front", "spare"]));
    let out = d.ok(&["network", "prune", "-f", "--filter", "label=x"]);
    assert_eq!(out.stdout, "Deleted Networks:\nspare\n");
    let out = d.cli_input(&["network", "prune"], "y\n");
    assert!(out.success(), "{out}");
    assert!(out.stdout.ends_with("Deleted Networks:\nfront\n"), "{out}");
    assert_eq!(names("type=custom"), strs(&["back"]));
    let out = d.ok(&["network", "prune", "-f"]);
    assert_eq!(out.stdout, "", "nothing left to prune");

    // Bad filters.
    for (args, want) in [
        (
            &["network", "ls", "--filter", "foo=1"][..],
            "invalid filter 'foo'",
        ),
        (
            &["network", "prune", "-f", "--filter", "name=x"],
            "invalid filter 'name'",
        ),
        (
            &["network", "create", "--label", "=v", "n"],
            "invalid label",
        ),
    ] {
        let line = d.assert_refused(args);
        assert!(line.contains(want), "{args:?}: {line}");
    }
}
