//! The demo's LAN part: containers straight on a LAN segment. A switch
//! namespace, a LAN machine running Debian's dnsmasq, and a host with our
//! daemon whose `eth0` is on the switch:
//!
//! - a macvlan network with `--ipam-driver dhcp`, whose container takes
//!   its address from dnsmasq and talks to the LAN machine both ways;
//! - a VLAN 100 network on the same `eth0` (no 8021q: our programs push
//!   and pop the tag), whose two containers talk, their ARP seen tagged on
//!   the switch by tcpdump.

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Result};

use crate::{
    lab::{self, Cleanup, Daemon},
    overlaybench::Underlay,
    sh, Progress,
};

use super::demo::show;

pub fn lan(p: &mut Progress, bin: &std::path::Path, pid: u32) -> Result<()> {
    let tag = format!("dpdemo{pid}");
    let dir = std::env::temp_dir().join(format!("dpdemo-{pid}-lan"));
    let bpffs = PathBuf::from(format!("/sys/fs/bpf/dpdemo-{pid}-lan"));
    let mut cl = Cleanup::default();
    cl.dir(&dir)?;
    cl.path(&bpffs);

    p.step("a LAN: a switch, a machine with dnsmasq (DHCP), and a host with the daemon on it");
    let u = Underlay::build(&mut cl, &format!("{tag}-sw"), "10.80.0")?;
    let srv = format!("{tag}-srv");
    let srv_ip = u.add_host(&mut cl, &srv, "srv", 2)?;
    let host = format!("{tag}-lanhost");
    u.add_host(&mut cl, &host, "lanhost", 3)?;
    let leases = dir.join("leases");
    let mut dnsmasq = lab::in_netns(
        &srv,
        &[
            "dnsmasq",
            "--no-daemon",
            "--conf-file=/dev/null",
            "--port=0",
            "--interface=eth0",
            "--bind-interfaces",
            "--dhcp-authoritative",
            "--no-ping",
            "--dhcp-range=10.80.0.100,10.80.0.150,255.255.255.0,10m",
            "--dhcp-option=option:router,10.80.0.1",
        ],
    );
    dnsmasq.arg(format!("--dhcp-leasefile={}", leases.display()));
    dnsmasq
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let _dnsmasq = sh::spawn(&mut dnsmasq)?;
    let mut d = Daemon::start(bin, &host, &dir, &bpffs, Duration::from_secs(20))?;
    println!("# the LAN 10.80.0.0/24: switch {} (10.80.0.1), DHCP server {srv} ({srv_ip}), our host {host} (eth0 on the switch)\n", u.ns);

    p.step("network create -d macvlan --ipam-driver dhcp -o parent=eth0 lan; run web");
    let create = [
        "network",
        "create",
        "-d",
        "macvlan",
        "--ipam-driver",
        "dhcp",
        "--subnet",
        "10.80.0.0/24",
        "-o",
        "parent=eth0",
        "lan",
    ];
    show(&format!("dataplane {}", create.join(" ")), &d.cli(&create)?);
    let web = d.run("web", "lan", &["sleep", "infinity"])?;
    show(
        "dataplane run -d --name web --network lan -- sleep infinity",
        &format!("({}: {})", web.name, web.ip),
    );
    let tmpl = "{{json .NetworkSettings.Networks.lan.DHCP}}";
    show(
        &format!("dataplane inspect -f '{tmpl}' web"),
        &d.cli(&["inspect", "-f", tmpl, "web"])?,
    );
    let lease_file = std::fs::read_to_string(&leases).unwrap_or_default();
    show("cat dnsmasq's lease file", &lease_file);
    if !lease_file.contains(&web.ip) {
        bail!("dnsmasq has no lease for web's {}", web.ip);
    }
    show(
        &format!("dataplane exec web -- ping -c 2 {srv_ip}"),
        &d.cli(&["exec", "web", "--", "ping", "-c", "2", "-W", "2", &srv_ip])?,
    );
    let back = sh::output(
        &mut lab::in_netns(&srv, &["ping", "-c", "2", "-W", "2", &web.ip]),
        Some(Duration::from_secs(10)),
    )?;
    show(&format!("ip netns exec {srv} ping -c 2 {}", web.ip), &back);

    p.step("network create -d macvlan -o parent=eth0.100 v100 (VLAN 100, tags pushed and popped in eBPF)");
    let create = [
        "network",
        "create",
        "-d",
        "macvlan",
        "--subnet",
        "10.100.0.0/24",
        "-o",
        "parent=eth0.100",
        "v100",
    ];
    show(&format!("dataplane {}", create.join(" ")), &d.cli(&create)?);
    let a = d.run("va", "v100", &["sleep", "infinity"])?;
    let b = d.run("vb", "v100", &["sleep", "infinity"])?;
    let mut dump = lab::in_netns(
        &u.ns,
        &[
            "timeout", "15", "tcpdump", "-i", "lanhost", "-n", "-e", "-l", "-c", "1", "vlan",
            "100", "and", "arp",
        ],
    );
    dump.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut dump = sh::spawn(&mut dump)?;
    show(
        &format!("dataplane exec va -- ping -c 2 {}   # va is {}", b.ip, a.ip),
        &d.cli(&["exec", "va", "--", "ping", "-c", "2", "-W", "2", &b.ip])?,
    );
    // va's ARP broadcast also leaves through eth0, tagged; asked again
    // (neighbours flushed) until tcpdump, which may have started late,
    // has seen one.
    for _ in 0..10 {
        if matches!(dump.try_wait(), Ok(Some(_))) {
            break;
        }
        lab::ip(&a.netns, &["neigh", "flush", "all"])?;
        let _ = d.cli(&["exec", "va", "--", "ping", "-c", "1", "-W", "1", &b.ip]);
    }
    let seen = dump.wait_with_output()?;
    let line = String::from_utf8_lossy(&seen.stdout).into_owned();
    show(
        &format!(
            "ip netns exec {} tcpdump -i lanhost -e -c 1 vlan 100 and arp   # on the switch",
            u.ns
        ),
        &line,
    );
    if !line.contains("vlan 100") {
        bail!("the switch saw no ARP tagged with VLAN 100: {line}");
    }
    show(
        "dataplane network inspect -f '{{json .Options}}' v100",
        &d.cli(&["network", "inspect", "-f", "{{json .Options}}", "v100"])?,
    );
    d.cli(&["rm", "-f", "web", "va", "vb"])?;
    let left = std::fs::read_to_string(&leases).unwrap_or_default();
    println!(
        "after rm: web's lease {} dnsmasq's file (RELEASE sent)\n",
        if left.contains(&web.ip) {
            "is still in"
        } else {
            "is gone from"
        }
    );
    println!("LAN OK: a macvlan container with an address from the LAN's DHCP server, and a VLAN network tagged by our programs, no 8021q.\n");
    drop(d);
    drop(cl);
    Ok(())
}
