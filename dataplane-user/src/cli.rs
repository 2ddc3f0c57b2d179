//! The Docker-shaped command line. Every subcommand but `daemon` is a client
//! of the daemon's API.

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use hyper::Method;
use serde_json::{json, Value};

use crate::{
    api::{
        client::{self, seg, Client},
        PublishedPort, DEFAULT_SOCKET,
    },
    ports,
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

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
}

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
    /// List containers.
    Ps {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Show a container as JSON (SandboxKey is its netns path).
    Inspect { name: String },
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
        #[arg(long, value_enum, default_value_t)]
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
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
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
        #[arg(long, value_enum, default_value_t)]
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
        #[arg(long, value_enum, default_value_t)]
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
        #[arg(long, value_enum, default_value_t)]
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
        name: String,
    },
    /// List networks.
    #[command(alias = "list")]
    Ls {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Show networks as JSON, shaped like `docker network inspect`.
    Inspect { names: Vec<String> },
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

/// Prints `v` as pretty JSON, or as a table of `row(item)` for each item of
/// the array `items` (which `v` is, or holds).
fn print_listing(
    v: &Value,
    items: &Value,
    format: Format,
    headers: &[&str],
    row: impl Fn(&Value) -> Vec<String>,
) -> Result<()> {
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        let rows = items.as_array().into_iter().flatten().map(row).collect();
        print_table(headers, rows);
    }
    Ok(())
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
        Cmd::Network(n) => network(&c, n).await?,
        Cmd::Service(cmd) => service(&c, cmd).await?,
        Cmd::Node(NodeCmd::Ls { format }) => {
            let v = c.json(Method::GET, "/nodes", None).await?;
            let headers = ["NAME", "ADDRESS", "STATE", "SINCE", "CONTAINERS"];
            print_listing(&v, &v, format, &headers, |n| {
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
                        "publish_all": r.publish_all, "cmd": r.cmd,
                    })),
                )
                .await?;
            println!("{}", s(&v["Id"]));
        }
        Cmd::Ps { format } => {
            let v = c.json(Method::GET, "/containers", None).await?;
            let headers = [
                "CONTAINER ID",
                "NAME",
                "STATUS",
                "PORTS",
                "NETWORKS",
                "COMMAND",
            ];
            print_listing(&v, &v, format, &headers, |c| {
                let nets: Vec<String> = c["Networks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(s)
                    .collect();
                vec![
                    short(&c["Id"]),
                    s(&c["Name"]),
                    s(&c["State"]),
                    s(&c["Ports"]),
                    nets.join(","),
                    s(&c["Command"]),
                ]
            })?;
        }
        Cmd::Inspect { name } => {
            let v = c
                .json(Method::GET, &format!("/containers/{}", seg(&name)), None)
                .await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Cmd::Exec { name, cmd } => return exec(&c, &name, &cmd).await,
        Cmd::Port { name, port, format } => port_cmd(&c, &name, port.as_deref(), format).await?,
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
            print_listing(&v, &v["programs"], format, &headers, |p| {
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
            if format != Format::Json {
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

async fn network(c: &Client, cmd: NetworkCmd) -> Result<()> {
    match cmd {
        NetworkCmd::Create {
            driver,
            subnet,
            gateway,
            ip_range,
            aux_address,
            internal,
            opt,
            name,
        } => {
            let body = json!({
                "name": name, "driver": driver, "subnet": subnet, "gateway": gateway, "ip_range": ip_range,
                "aux_addresses": key_values(&aux_address, "--aux-address")?,
                "internal": internal, "options": key_values(&opt, "--opt")?,
            });
            let v = c.json(Method::POST, "/networks", Some(body)).await?;
            println!("{}", s(&v["Id"]));
        }
        NetworkCmd::Ls { format } => {
            let v = c.json(Method::GET, "/networks", None).await?;
            let headers = ["NETWORK ID", "NAME", "DRIVER", "SCOPE", "SUBNET"];
            print_listing(&v, &v, format, &headers, |n| {
                vec![
                    short(&n["Id"]),
                    s(&n["Name"]),
                    s(&n["Driver"]),
                    s(&n["Scope"]),
                    s(&n["Subnet"]),
                ]
            })?;
        }
        NetworkCmd::Inspect { names } => {
            if names.is_empty() {
                bail!("network inspect needs at least one network name");
            }
            let mut all = Vec::new();
            for n in names {
                let v = c
                    .json(Method::GET, &format!("/networks/{}", seg(&n)), None)
                    .await?;
                all.extend(v.as_array().cloned().unwrap_or_default());
            }
            println!("{}", serde_json::to_string_pretty(&all)?);
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
    Ok(())
}

/// `port NAME [PRIVATE_PORT[/PROTO]]`, printed as Docker does.
async fn port_cmd(c: &Client, name: &str, port: Option<&str>, format: Format) -> Result<()> {
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
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        for line in ports::port_lines(&list, filter) {
            println!("{line}");
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
            print_listing(&v, &v, format, &headers, |x| {
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
            print_listing(&v, &v, format, &headers, |t| {
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
