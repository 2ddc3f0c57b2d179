//! The Docker-shaped command line. Every subcommand but `daemon` is a client
//! of the daemon's API.

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Args, Parser, Subcommand};
use hyper::Method;
use serde_json::{json, Value};

use crate::{
    api::{
        client::{self, seg, Client},
        PublishedPort, DEFAULT_SOCKET,
    },
    format, ports,
};

#[derive(Parser, Debug)]
#[command(
    name = "dataplane",
    version,
    about = "eBPF container networking: Docker-style networks without a Linux bridge, iptables or docker-proxy"
)]
pub struct Cli {
    /// Daemon socket to talk to, as unix:///PATH (like `docker -H`).
    #[arg(short = 'H', long, global = true, env = "DATAPLANE_HOST", default_value_t = format!("unix://{DEFAULT_SOCKET}"))]
    pub host: String,
    /// Seconds to wait for the daemon's answer to each request before
    /// giving up with an error (a daemon that is stopped or stuck); 0 waits
    /// forever. Connecting gives up after at most 5 s.
    #[arg(long, global = true, env = "DATAPLANE_TIMEOUT", default_value = "60", value_name = "SECONDS", value_parser = client::parse_timeout)]
    pub timeout: std::option::Option<std::time::Duration>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

pub use crate::format::Format;

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the daemon (API server, BPF loader, IPAM).
    Daemon(DaemonArgs),
    /// Manage networks.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// The hosts of the cluster (with --store).
    #[command(subcommand)]
    Node(NodeCmd),
    /// Services: replicas of one command balanced behind a virtual IP and
    /// ingress ports every host answers (swarm's routing mesh, in eBPF).
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Create a sandbox on a network and start a command in it, detached.
    Run(RunArgs),
    /// List containers (running ones; -a: all).
    Ps(PsArgs),
    /// Show containers as JSON (SandboxKey is the netns path), or one
    /// line each through a Go template (-f '{{.NetworkSettings.IPAddress}}').
    Inspect {
        /// json, or a Go template rendered for each container.
        #[arg(short, long, default_value = "json")]
        format: Format,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Run a command inside a container's sandbox; exits with its status.
    Exec {
        name: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        cmd: Vec<String>,
    },
    /// Print a container's output.
    Logs { name: String },
    /// List a container's published ports (`80/tcp -> 0.0.0.0:8080`), or
    /// the host addresses of one of its ports.
    Port {
        name: String,
        /// PRIVATE_PORT[/tcp|udp]
        port: Option<String>,
        /// table, json, a Go template ('{{.Name}}'), or 'table TEMPLATE'.
        #[arg(long, default_value = "table")]
        format: Format,
    },
    /// Remove containers (with -f, stop them first).
    Rm {
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Per-program packet, byte and drop-by-reason counters.
    Stats {
        /// table, json, a Go template ('{{.Name}}'), or 'table TEMPLATE'.
        #[arg(long, default_value = "table")]
        format: Format,
    },
}

#[derive(Args, Debug)]
pub struct PsArgs {
    /// Show every container (default: running ones).
    #[arg(short, long)]
    pub all: bool,
    /// Only the container ids.
    #[arg(short, long)]
    pub quiet: bool,
    /// Full ids and commands.
    #[arg(long)]
    pub no_trunc: bool,
    /// KEY=VALUE: id, name, network, status, label, runtime (repeatable).
    #[arg(short, long = "filter", value_name = "FILTER")]
    pub filter: Vec<String>,
    /// table, json (one object per line), a Go template ('{{.Names}}'), or
    /// 'table TEMPLATE'.
    #[arg(long, default_value = "table")]
    pub format: Format,
}

#[derive(Args, Debug)]
pub struct DaemonArgs {
    /// Directory of the API socket (api.sock).
    #[arg(long, default_value = "/run/dataplane")]
    pub run_dir: PathBuf,
    /// Directory of the state database and container logs.
    #[arg(long, default_value = "/var/lib/dataplane")]
    pub state_dir: PathBuf,
    /// bpffs directory for pinned maps and links (mounted if missing).
    #[arg(long, default_value = "/sys/fs/bpf/dataplane")]
    pub bpffs: PathBuf,
    /// Join a cluster whose hosts agree through etcd:
    /// etcd://HOST:PORT[,HOST:PORT...]. Without it the daemon keeps its
    /// embedded store and has no overlay networks.
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// This host's name in the cluster (default: the hostname).
    #[arg(long, requires = "store")]
    pub node_name: Option<String>,
    /// The underlay address other hosts send this host's VXLAN to (an
    /// address of one of its interfaces).
    #[arg(long, requires = "store", value_name = "IP")]
    pub advertise_addr: Option<std::net::Ipv4Addr>,
    /// Seconds without renewing its lease after which other hosts see this
    /// one down.
    #[arg(long, default_value = "10", value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub lease_ttl: u64,
    /// Seconds a down host's endpoints stay in the other hosts' maps (its
    /// containers may still run on their pinned datapath).
    #[arg(long, default_value = "300", value_name = "SECONDS")]
    pub node_grace: u64,
    /// Also serve Docker's remote network driver and IPAM driver protocols
    /// (`docker network create -d dataplane --ipam-driver dataplane`).
    #[arg(long)]
    pub docker_plugin: bool,
    /// Docker's plugin directory: the socket is DIR/NAME.sock.
    #[arg(long, default_value = crate::docker::DEFAULT_PLUGIN_DIR, value_name = "DIR")]
    pub docker_plugin_dir: PathBuf,
    /// The driver's name in Docker (`-d NAME`, `--ipam-driver NAME`).
    #[arg(long, default_value = crate::docker::DEFAULT_PLUGIN_NAME, value_name = "NAME")]
    pub docker_plugin_name: String,
    /// Docker's API socket (unix:///var/run/docker.sock), asked for the
    /// names of the networks Docker creates on our driver.
    #[arg(long, value_name = "URL")]
    pub docker_host: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// List the hosts: name, underlay address, state, containers on
    /// shared networks.
    #[command(alias = "list")]
    Ls {
        /// table, json, a Go template ('{{.Name}}'), or 'table TEMPLATE'.
        #[arg(long, default_value = "table")]
        format: Format,
    },
}

#[derive(Subcommand, Debug)]
pub enum ServiceCmd {
    /// Create a service and start its replicas on the cluster's hosts.
    Create(ServiceCreateArgs),
    /// List services: replicas live/desired, VIP, ports.
    #[command(alias = "list")]
    Ls {
        /// table, json, a Go template ('{{.Name}}'), or 'table TEMPLATE'.
        #[arg(long, default_value = "table")]
        format: Format,
    },
    /// Show services as JSON: spec, virtual IP, tasks, counters.
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// List a service's replicas: host, state, address.
    Ps {
        name: String,
        /// table, json, a Go template ('{{.Name}}'), or 'table TEMPLATE'.
        #[arg(long, default_value = "table")]
        format: Format,
    },
    /// Set the replica count of services: NAME=N ...
    Scale {
        #[arg(required = true, value_name = "NAME=REPLICAS")]
        pairs: Vec<String>,
    },
    /// Change a service's replica count or published ports.
    Update {
        name: String,
        #[arg(long)]
        replicas: Option<u32>,
        /// A port to publish (as --publish of create).
        #[arg(long, value_name = "SPEC")]
        publish_add: Vec<String>,
        /// A published port to remove: PORT[/PROTO].
        #[arg(long, value_name = "PORT")]
        publish_rm: Vec<String>,
    },
    /// Remove services and their replicas.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Args, Debug)]
pub struct ServiceCreateArgs {
    #[arg(long)]
    pub name: String,
    /// Number of replicas.
    #[arg(long, default_value = "1", value_name = "N")]
    pub replicas: u32,
    /// The network the replicas join and the VIP lives on.
    #[arg(long)]
    pub network: String,
    /// published=P,target=T[,protocol=tcp|udp][,mode=ingress|host], or P:T[/PROTO].
    #[arg(short = 'p', long, value_name = "SPEC")]
    pub publish: Vec<String>,
    /// vip (one virtual IP, balanced in eBPF) or dnsrr (DNS answers the replicas).
    #[arg(long, value_name = "MODE")]
    pub endpoint_mode: Option<String>,
    /// Command run with /bin/sh -c in each replica's sandbox; exit 0 is healthy.
    #[arg(long, value_name = "CMD")]
    pub health_cmd: Option<String>,
    /// Time between health checks (e.g. 1s, 500ms; default 5s).
    #[arg(long, value_name = "DURATION")]
    pub health_interval: Option<String>,
    /// Time a health check may take (default 5s).
    #[arg(long, value_name = "DURATION")]
    pub health_timeout: Option<String>,
    /// Consecutive failures that make a replica unhealthy (default 3).
    #[arg(long, value_name = "N")]
    pub health_retries: Option<u32>,
    /// KEY=VALUE in each replica's environment.
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub cmd: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum NetworkCmd {
    /// Create a network.
    Create {
        #[arg(short, long, default_value = "bridge")]
        driver: String,
        #[arg(long)]
        subnet: Option<String>,
        #[arg(long)]
        gateway: Option<String>,
        #[arg(long)]
        ip_range: Option<String>,
        /// Addresses IPAM must not hand out, NAME=IP.
        #[arg(long = "aux-address")]
        aux_address: Vec<String>,
        /// No traffic leaves the subnet.
        #[arg(long)]
        internal: bool,
        /// Driver options, KEY=VALUE.
        #[arg(short, long = "opt")]
        opt: Vec<String>,
        /// Metadata, KEY=VALUE or KEY (repeatable).
        #[arg(long)]
        label: Vec<String>,
        /// Accepted as Docker takes it: standalone containers may join
        /// (every network here takes them).
        #[arg(long)]
        attachable: bool,
        /// Where addresses come from: `default` (this daemon) or `dhcp`
        /// (the LAN's DHCP server; macvlan networks).
        #[arg(long)]
        ipam_driver: Option<String>,
        name: String,
    },
    /// List networks.
    #[command(alias = "list")]
    Ls {
        /// Only the network ids.
        #[arg(short, long)]
        quiet: bool,
        /// Full ids.
        #[arg(long)]
        no_trunc: bool,
        /// KEY=VALUE: id, name, driver, scope, type, label (repeatable).
        #[arg(short, long = "filter", value_name = "FILTER")]
        filter: Vec<String>,
        /// table, json (one object per line), a Go template ('{{.Name}}'),
        /// or 'table TEMPLATE'.
        #[arg(long, default_value = "table")]
        format: Format,
    },
    /// Show networks as JSON, shaped like `docker network inspect`, or one
    /// line each through a Go template.
    Inspect {
        /// json, or a Go template rendered for each network.
        #[arg(short, long, default_value = "json")]
        format: Format,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove every network no container uses.
    Prune {
        /// Do not ask for confirmation.
        #[arg(short, long)]
        force: bool,
        /// label=KEY[=VALUE] (repeatable).
        #[arg(long = "filter", value_name = "FILTER")]
        filter: Vec<String>,
    },
    /// Remove networks (refused while endpoints are attached).
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Attach a container to a network (adds eth1, eth2, ...).
    Connect {
        #[arg(long)]
        ip: Option<String>,
        /// Alias on this network (repeatable).
        #[arg(long)]
        alias: Vec<String>,
        network: String,
        container: String,
    },
    /// Detach a container from a network.
    Disconnect { network: String, container: String },
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Detached (the only mode: output goes to `dataplane logs`).
    #[arg(short, long)]
    pub detach: bool,
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long, alias = "net")]
    pub network: Option<String>,
    #[arg(long)]
    pub ip: Option<String>,
    #[arg(long)]
    pub hostname: Option<String>,
    /// Name this container also answers to on its network (repeatable).
    #[arg(long = "network-alias", alias = "net-alias")]
    pub network_alias: Vec<String>,
    /// Upstream DNS server for this container (repeatable).
    #[arg(long)]
    pub dns: Vec<String>,
    /// Link to another container: NAME[:ALIAS] (repeatable).
    #[arg(long)]
    pub link: Vec<String>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(short, long)]
    pub env: Vec<String>,
    /// Port the container offers, PORT[/tcp|udp] (repeatable).
    #[arg(long)]
    pub expose: Vec<String>,
    /// Publish a container port on the host,
    /// [[IP:][HOSTPORT]:]CONTAINERPORT[/tcp|udp], ports or ranges
    /// (repeatable).
    #[arg(short = 'p', long = "publish")]
    pub publish: Vec<String>,
    /// Publish every exposed port onto a free host port.
    #[arg(short = 'P', long = "publish-all")]
    pub publish_all: bool,
    /// Metadata, KEY=VALUE or KEY (repeatable).
    #[arg(short, long)]
    pub label: Vec<String>,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub cmd: Vec<String>,
}

fn socket_of(host: &str) -> Result<PathBuf> {
    match host.strip_prefix("unix://") {
        Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
        _ => bail!("invalid --host {host:?}: expected unix:///PATH"),
    }
}

fn key_values(items: &[String], what: &str) -> Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(anyhow!("invalid {what} {kv:?}: expected KEY=VALUE")),
        })
        .collect()
}

fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", s.join("   ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

/// `--label KEY=VALUE` or `--label KEY` (an empty value), as Docker takes
/// them.
fn labels(items: &[String]) -> Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            if k.is_empty() {
                bail!("invalid label {kv:?}: expected KEY=VALUE or KEY");
            }
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

/// Prints `v` as pretty JSON, each item of the array `items` (which `v`
/// is, or holds) through a template, or a table of `row(item)`.
fn print_listing(
    v: &Value,
    items: &Value,
    format: &Format,
    headers: &[&str],
    row: impl Fn(&Value) -> Vec<String>,
) -> Result<()> {
    let list = items.as_array().cloned().unwrap_or_default();
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(v)?),
        Format::Template { text, table } => {
            format::print_template(text, *table, &list, format::title_of)?
        }
        Format::Table => print_table(headers, list.iter().map(row).collect()),
    }
    Ok(())
}

/// Prints Docker-shaped list lines (`ps`, `network ls`): the default
/// template, JSON one object per line, the user's template, or ids only.
fn print_lines(
    lines: &[Value],
    format: &Format,
    quiet: bool,
    default: &str,
    header: impl Fn(&str) -> String,
) -> Result<()> {
    if quiet {
        for l in lines {
            println!("{}", s(&l["ID"]));
        }
        return Ok(());
    }
    match format {
        Format::Json => {
            for l in lines {
                println!("{}", serde_json::to_string(l)?);
            }
            Ok(())
        }
        Format::Template { text, table } => format::print_template(text, *table, lines, header),
        Format::Table => format::print_template(default, true, lines, header),
    }
}

/// The default `ps` columns (Docker's, with the networks beside the ports).
const PS_TABLE: &str =
    "{{.ID}}\t{{.Command}}\t{{.RunningFor}}\t{{.Status}}\t{{.Ports}}\t{{.Networks}}\t{{.Names}}";

/// The default `network ls` columns (Docker's, and the subnet).
const NETWORK_TABLE: &str = "{{.ID}}\t{{.Name}}\t{{.Driver}}\t{{.Scope}}\t{{.Subnet}}";

/// `KEY=VALUE,...` as Docker's list lines print labels.
fn label_text(v: &Value) -> String {
    v.as_object()
        .into_iter()
        .flatten()
        .map(|(k, x)| format!("{k}={}", s(x)))
        .collect::<Vec<_>>()
        .join(",")
}

/// A `Created` time as Docker's `CreatedAt` prints it
/// (`2026-12-02 12:40:26 +0000 UTC`).
fn created_at(t: &str) -> String {
    match t.strip_suffix('Z').and_then(|t| t.split_once('T')) {
        Some((d, h)) => format!("{d} {h} +0000 UTC"),
        None => t.to_string(),
    }
}

/// One `ps` line with Docker's field names (what `--format json` prints
/// and templates see), from the API's container object.
fn ps_line(c: &Value, no_trunc: bool) -> Value {
    let mut cmd = s(&c["Command"]);
    if !no_trunc && cmd.chars().count() > 20 {
        cmd = cmd.chars().take(19).collect::<String>() + "…";
    }
    let nets: Vec<String> = c["Networks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(s)
        .collect();
    json!({
        "ID": if no_trunc { s(&c["Id"]) } else { short(&c["Id"]) },
        "Names": s(&c["Name"]),
        "Image": "",
        "Command": format!("\"{cmd}\""),
        "CreatedAt": created_at(&s(&c["Created"])),
        "RunningFor": s(&c["RunningFor"]),
        "Status": s(&c["Status"]),
        "State": s(&c["State"]),
        "Ports": s(&c["Ports"]),
        "Networks": nets.join(","),
        "Labels": label_text(&c["Labels"]),
        "Mounts": "",
        "LocalVolumes": "0",
        "Size": "0B",
        "Runtime": s(&c["Runtime"]),
    })
}

/// One `network ls` line with Docker's field names.
fn network_line(n: &Value, no_trunc: bool) -> Value {
    json!({
        "ID": if no_trunc { s(&n["Id"]) } else { short(&n["Id"]) },
        "Name": s(&n["Name"]),
        "Driver": s(&n["Driver"]),
        "Scope": s(&n["Scope"]),
        "IPv6": s(&n["IPv6"]),
        "Internal": s(&n["Internal"]),
        "Labels": label_text(&n["Labels"]),
        "CreatedAt": created_at(&s(&n["Created"])),
        "Subnet": s(&n["Subnet"]),
    })
}

/// `?filters=...` for `--filter` arguments ("" when there are none).
fn filter_query(args: &[String]) -> Result<String> {
    let f = crate::api::filters::Filters::from_args(args).map_err(|e| anyhow!(e))?;
    Ok(if f.is_empty() {
        String::new()
    } else {
        format!("filters={}", query_escape(&f.to_query()))
    })
}

/// Percent-encodes a query value.
fn query_escape(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `inspect` and `network inspect` of several names, as Docker prints
/// them: the JSON array of the ones found (or one template line each), and
/// `Error: No such ...` on stderr for the others. Returns the exit code.
async fn inspect_many(c: &Client, route: &str, names: &[String], format: &Format) -> Result<i32> {
    let mut found = Vec::new();
    let mut failed = false;
    for n in names {
        match c
            .json(Method::GET, &format!("{route}/{}", seg(n)), None)
            .await
        {
            Ok(v) => found.extend(v.as_array().cloned().unwrap_or_default()),
            // An unknown name: said, and the others still shown. Any
            // other failure (no daemon) ends the command.
            Err(e)
                if e.downcast_ref::<client::HttpError>()
                    .is_some_and(|h| h.status == 404) =>
            {
                eprintln!("Error: {e}");
                failed = true;
            }
            Err(e) => return Err(e),
        }
    }
    match format {
        Format::Template { text, .. } => {
            for line in format::render_each(text, &found)? {
                println!("{line}");
            }
        }
        Format::Json | Format::Table => println!("{}", serde_json::to_string_pretty(&found)?),
    }
    Ok(i32::from(failed))
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn short(id: &Value) -> String {
    s(id).chars().take(12).collect()
}

/// Runs a client subcommand; returns the process exit code.
/// `timeout` bounds each request to the daemon (`None`: no limit).
pub async fn run_client(host: &str, timeout: Option<std::time::Duration>, cmd: Cmd) -> Result<i32> {
    let c = Client::new(&socket_of(host)?).with_timeout(timeout);
    match cmd {
        Cmd::Daemon(_) => unreachable!("handled in main"),
        Cmd::Network(n) => return network(&c, n).await,
        Cmd::Service(cmd) => service(&c, cmd).await?,
        Cmd::Node(NodeCmd::Ls { format }) => {
            let v = c.json(Method::GET, "/nodes", None).await?;
            let headers = ["NAME", "ADDRESS", "STATE", "SINCE", "CONTAINERS"];
            print_listing(&v, &v, &format, &headers, |n| {
                let me = if n["Self"].as_bool() == Some(true) {
                    " *"
                } else {
                    ""
                };
                vec![
                    format!("{}{me}", s(&n["Name"])),
                    s(&n["Addr"]),
                    s(&n["State"]),
                    s(&n["Since"]),
                    n["Containers"].to_string(),
                ]
            })?;
        }
        Cmd::Run(r) => {
            let v = c
                .json(
                    Method::POST,
                    "/containers",
                    Some(json!({
                        "name": r.name, "network": r.network, "ip": r.ip, "hostname": r.hostname,
                        "network_aliases": r.network_alias, "dns": r.dns, "links": r.link,
                        "env": r.env, "expose": r.expose, "publish": r.publish,
                        "publish_all": r.publish_all, "labels": labels(&r.label)?, "cmd": r.cmd,
                    })),
                )
                .await?;
            println!("{}", s(&v["Id"]));
        }
        Cmd::Ps(a) => {
            let mut q = filter_query(&a.filter)?;
            if a.all {
                q.push_str(if q.is_empty() { "all=1" } else { "&all=1" });
            }
            let v = c
                .json(Method::GET, &format!("/containers?{q}"), None)
                .await?;
            let lines: Vec<Value> = v
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| ps_line(c, a.no_trunc))
                .collect();
            print_lines(&lines, &a.format, a.quiet, PS_TABLE, |f| match f {
                "ID" => "CONTAINER ID".into(),
                "RunningFor" => "CREATED".into(),
                f => format::title_of(f),
            })?;
        }
        Cmd::Inspect { format, names } => {
            return inspect_many(&c, "/containers", &names, &format).await;
        }
        Cmd::Exec { name, cmd } => return exec(&c, &name, &cmd).await,
        Cmd::Port { name, port, format } => port_cmd(&c, &name, port.as_deref(), &format).await?,
        Cmd::Logs { name } => {
            let b = c
                .call(
                    Method::GET,
                    &format!("/containers/{}/logs", seg(&name)),
                    None,
                )
                .await?;
            print!("{}", String::from_utf8_lossy(&b));
        }
        Cmd::Rm { force, names } => {
            let mut failed = false;
            for n in names {
                match c
                    .call(
                        Method::DELETE,
                        &format!("/containers/{}?force={force}", seg(&n)),
                        None,
                    )
                    .await
                {
                    Ok(_) => println!("{n}"),
                    Err(e) => {
                        eprintln!("Error: {e}");
                        failed = true;
                    }
                }
            }
            return Ok(i32::from(failed));
        }
        Cmd::Stats { format } => {
            let v = c.json(Method::GET, "/stats", None).await?;
            let headers = [
                "PROGRAM",
                "PACKETS",
                "BYTES",
                "REDIRECTED",
                "PASSED",
                "ARP REPLIES",
                "TRANSLATED",
                "NEW FLOWS",
                "ALLOC FAILED",
                "DROPS",
            ];
            print_listing(&v, &v["programs"], &format, &headers, |p| {
                let drops: Vec<String> = p["drops"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(_, n)| n.as_u64() != Some(0))
                    .map(|(k, n)| format!("{k}={n}"))
                    .collect();
                let drops = if drops.is_empty() {
                    "0".into()
                } else {
                    drops.join(" ")
                };
                let counter = |k: &str| s(&p[k]);
                vec![
                    counter("name"),
                    counter("packets"),
                    counter("bytes"),
                    counter("redirected"),
                    counter("passed"),
                    counter("arp_replies"),
                    counter("translated"),
                    counter("ct_created"),
                    counter("alloc_failed"),
                    drops,
                ]
            })?;
            if format == Format::Table {
                println!(
                    "conntrack entries: {} (one per direction of each translated flow)",
                    s(&v["conntrack"]["entries"])
                );
                println!("{}", crate::bpf::SOCK_STATS_NOTE);
                let rows: Vec<Vec<String>> = v["services"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|svc| {
                        let drops: Vec<String> = svc["Drops"]
                            .as_object()
                            .into_iter()
                            .flatten()
                            .map(|(k, n)| format!("{k}={n}"))
                            .collect();
                        let head = vec![
                            s(&svc["Service"]),
                            s(&svc["Connections"]),
                            s(&svc["Packets"]),
                            s(&svc["Bytes"]),
                            if drops.is_empty() {
                                "0".into()
                            } else {
                                drops.join(" ")
                            },
                        ];
                        let replicas = svc["Replicas"].as_array().cloned().unwrap_or_default();
                        std::iter::once(head).chain(replicas.into_iter().map(|r| {
                            vec![
                                format!(
                                    "  {} ({}{})",
                                    s(&r["Name"]),
                                    s(&r["IP"]),
                                    if r["Live"].as_bool() == Some(true) {
                                        ""
                                    } else {
                                        ", out"
                                    }
                                ),
                                s(&r["Connections"]),
                                s(&r["Packets"]),
                                s(&r["Bytes"]),
                                String::new(),
                            ]
                        }))
                    })
                    .collect();
                if !rows.is_empty() {
                    println!();
                    print_table(
                        &[
                            "SERVICE / REPLICA",
                            "CONNECTIONS",
                            "PACKETS",
                            "BYTES",
                            "DROPS",
                        ],
                        rows,
                    );
                }
            }
        }
    }
    Ok(0)
}

async fn network(c: &Client, cmd: NetworkCmd) -> Result<i32> {
    match cmd {
        NetworkCmd::Create {
            driver,
            subnet,
            gateway,
            ip_range,
            aux_address,
            internal,
            opt,
            label,
            attachable,
            ipam_driver,
            name,
        } => {
            let body = json!({
                "ipam_driver": ipam_driver,
                "name": name, "driver": driver, "subnet": subnet, "gateway": gateway, "ip_range": ip_range,
                "aux_addresses": key_values(&aux_address, "--aux-address")?,
                "internal": internal, "options": key_values(&opt, "--opt")?,
                "labels": labels(&label)?, "attachable": attachable,
            });
            let v = c.json(Method::POST, "/networks", Some(body)).await?;
            println!("{}", s(&v["Id"]));
        }
        NetworkCmd::Ls {
            quiet,
            no_trunc,
            filter,
            format,
        } => {
            let q = filter_query(&filter)?;
            let v = c.json(Method::GET, &format!("/networks?{q}"), None).await?;
            let lines: Vec<Value> = v
                .as_array()
                .into_iter()
                .flatten()
                .map(|n| network_line(n, no_trunc))
                .collect();
            print_lines(&lines, &format, quiet, NETWORK_TABLE, |f| match f {
                "ID" => "NETWORK ID".into(),
                f => format::title_of(f),
            })?;
        }
        NetworkCmd::Inspect { format, names } => {
            return inspect_many(c, "/networks", &names, &format).await;
        }
        NetworkCmd::Prune { force, filter } => {
            if !force && !confirm()? {
                return Ok(0);
            }
            let q = filter_query(&filter)?;
            let v = c
                .json(Method::POST, &format!("/networks/prune?{q}"), None)
                .await?;
            let gone: Vec<String> = v["NetworksDeleted"]
                .as_array()
                .into_iter()
                .flatten()
                .map(s)
                .collect();
            if !gone.is_empty() {
                println!("Deleted Networks:");
                for n in gone {
                    println!("{n}");
                }
            }
        }
        NetworkCmd::Rm { names } => {
            for n in names {
                c.call(Method::DELETE, &format!("/networks/{}", seg(&n)), None)
                    .await?;
                println!("{n}");
            }
        }
        NetworkCmd::Connect {
            ip,
            alias,
            network,
            container,
        } => {
            c.call(
                Method::POST,
                &format!("/networks/{}/connect", seg(&network)),
                Some(json!({"container": container, "ip": ip, "aliases": alias})),
            )
            .await?;
        }
        NetworkCmd::Disconnect { network, container } => {
            c.call(
                Method::POST,
                &format!("/networks/{}/disconnect", seg(&network)),
                Some(json!({"container": container})),
            )
            .await?;
        }
    }
    Ok(0)
}

/// `network prune`'s question, answered on stdin (no answer is no).
fn confirm() -> Result<bool> {
    use std::io::Write as _;
    print!("WARNING! This will remove all custom networks not used by at least one container.\nAre you sure you want to continue? [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "Yes"))
}

/// `port NAME [PRIVATE_PORT[/PROTO]]`, printed as Docker does.
async fn port_cmd(c: &Client, name: &str, port: Option<&str>, format: &Format) -> Result<()> {
    let filter = port
        .map(ports::parse_private_port)
        .transpose()
        .map_err(|e| anyhow!(e))?;
    let v = c
        .json(
            Method::GET,
            &format!("/containers/{}/ports", seg(name)),
            None,
        )
        .await?;
    let mut list: Vec<PublishedPort> =
        serde_json::from_value(v).context("decoding the daemon's port list")?;
    if let Some((p, proto)) = &filter {
        list.retain(|x| x.private_port == *p && x.proto == *proto);
        if list.is_empty() {
            bail!("no public port '{p}/{proto}' published for {name}");
        }
    }
    ports::sort_published(&mut list);
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&list)?),
        Format::Template { text, table } => {
            let items: Vec<Value> = list.iter().map(|p| json!(p)).collect();
            format::print_template(text, *table, &items, format::title_of)?;
        }
        Format::Table => {
            for line in ports::port_lines(&list, filter) {
                println!("{line}");
            }
        }
    }
    Ok(())
}

/// Runs `cmd` in the container's sandbox from this process, the way
/// `ip netns exec` does (so `/etc/netns/<sandbox>/` files apply), inside the
/// container's UTS namespace when its process is alive.
async fn exec(c: &Client, name: &str, cmd: &[String]) -> Result<i32> {
    let v = c
        .json(Method::GET, &format!("/containers/{}", seg(name)), None)
        .await?;
    let info = &v[0];
    let sandbox = info["NetworkSettings"]["SandboxID"]
        .as_str()
        .ok_or_else(|| anyhow!("container {name} has no sandbox"))?
        .to_string();
    let pid = info["State"]["Pid"].as_u64().unwrap_or(0);
    let mut command = if sandbox.is_empty() {
        // `--network host`: the daemon's own namespace (SandboxKey).
        let key = info["NetworkSettings"]["SandboxKey"]
            .as_str()
            .ok_or_else(|| anyhow!("container {name} has no sandbox"))?;
        let mut c = std::process::Command::new("nsenter");
        c.arg(format!("--net={key}")).arg("--").args(cmd);
        c
    } else {
        let mut c = std::process::Command::new("ip");
        c.args(["netns", "exec", &sandbox]).args(cmd);
        c
    };
    if pid > 0 {
        let uts = std::fs::File::open(format!("/proc/{pid}/ns/uts")).ok();
        if let Some(uts) = uts {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: setns is async-signal-safe.
            unsafe {
                command.pre_exec(move || {
                    nix::sched::setns(&uts, nix::sched::CloneFlags::CLONE_NEWUTS)
                        .map_err(std::io::Error::from)
                });
            }
        }
    }
    let status = command.status().context("running ip netns exec")?;
    use std::os::unix::process::ExitStatusExt as _;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

async fn service(c: &Client, cmd: ServiceCmd) -> Result<()> {
    match cmd {
        ServiceCmd::Create(a) => {
            let v = c
                .json(
                    Method::POST,
                    "/services",
                    Some(json!({
                        "name": a.name, "network": a.network, "replicas": a.replicas,
                        "publish": a.publish, "endpoint_mode": a.endpoint_mode,
                        "health_cmd": a.health_cmd, "health_interval": a.health_interval,
                        "health_timeout": a.health_timeout, "health_retries": a.health_retries,
                        "env": a.env, "cmd": a.cmd,
                    })),
                )
                .await?;
            println!("{}", s(&v["Id"]));
        }
        ServiceCmd::Ls { format } => {
            let v = c.json(Method::GET, "/services", None).await?;
            let headers = ["ID", "NAME", "MODE", "REPLICAS", "NETWORK", "VIP", "PORTS"];
            print_listing(&v, &v, &format, &headers, |x| {
                let ports: Vec<String> =
                    x["Ports"].as_array().into_iter().flatten().map(s).collect();
                vec![
                    short(&x["ID"]),
                    s(&x["Name"]),
                    s(&x["Mode"]),
                    s(&x["Replicas"]),
                    s(&x["Network"]),
                    s(&x["VIP"]),
                    ports.join(", "),
                ]
            })?;
        }
        ServiceCmd::Inspect { names } => {
            let mut all = Vec::new();
            for n in names {
                all.push(
                    c.json(Method::GET, &format!("/services/{}", seg(&n)), None)
                        .await?,
                );
            }
            println!("{}", serde_json::to_string_pretty(&all)?);
        }
        ServiceCmd::Ps { name, format } => {
            let v = c
                .json(
                    Method::GET,
                    &format!("/services/{}/tasks", seg(&name)),
                    None,
                )
                .await?;
            let headers = [
                "ID", "NAME", "NODE", "STATE", "SINCE", "IP", "RESTARTS", "MESSAGE",
            ];
            print_listing(&v, &v, &format, &headers, |t| {
                let node = match (t["Placed"].as_bool(), s(&t["Node"])) {
                    (Some(false), _) => "-".to_string(),
                    (_, n) if n.is_empty() => "(this host)".to_string(),
                    (_, n) => n,
                };
                vec![
                    short(&t["ID"]),
                    s(&t["Name"]),
                    node,
                    s(&t["State"]),
                    s(&t["Since"]),
                    s(&t["IP"]),
                    s(&t["Restarts"]),
                    s(&t["Message"]),
                ]
            })?;
        }
        ServiceCmd::Scale { pairs } => {
            let mut parsed = Vec::new();
            for p in &pairs {
                let (name, n) = p.split_once('=').ok_or_else(|| {
                    anyhow!("invalid scale argument {p:?}: expected NAME=REPLICAS")
                })?;
                let n: u32 = n.parse().map_err(|_| {
                    anyhow!("invalid replicas {n:?} for service {name}: not a number")
                })?;
                parsed.push((name.to_string(), n));
            }
            for (name, n) in parsed {
                c.call(
                    Method::POST,
                    &format!("/services/{}/update", seg(&name)),
                    Some(json!({ "replicas": n })),
                )
                .await?;
                println!("{name} scaled to {n}");
            }
        }
        ServiceCmd::Update {
            name,
            replicas,
            publish_add,
            publish_rm,
        } => {
            c.call(
                Method::POST,
                &format!("/services/{}/update", seg(&name)),
                Some(json!({
                    "replicas": replicas, "publish_add": publish_add, "publish_rm": publish_rm,
                })),
            )
            .await?;
            println!("{name}");
        }
        ServiceCmd::Rm { names } => {
            for n in names {
                c.call(Method::DELETE, &format!("/services/{}", seg(&n)), None)
                    .await?;
                println!("{n}");
            }
        }
    }
    Ok(())
}
