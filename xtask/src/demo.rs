//! `cargo xtask demo`: a daemon in its own network namespace, a network, two
//! sandboxes talking through the eBPF switch (no Linux bridge), counters.

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::{
    build_dataplane,
    lab::{self, Cleanup, Daemon},
    setup, sh, Progress,
};

const WEB: &str = "while true; do echo hello-from-web | nc -l -p 8080 -q 1; done";

fn show(cmdline: &str, out: &str) {
    println!("$ {cmdline}");
    let out = out.trim_end();
    if !out.is_empty() {
        println!("{out}");
    }
    println!();
}

fn redirected(d: &Daemon) -> Result<u64> {
    let v: Value = serde_json::from_str(&d.cli(&["stats", "--format", "json"])?)
        .context("parsing stats JSON")?;
    Ok(v["programs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["redirected"].as_u64())
        .sum())
}

pub fn demo() -> Result<()> {
    let mut p = Progress::new(12);
    setup::setup(&mut p)?;
    p.step("building dataplane-user and its eBPF object");
    let bin = build_dataplane(false)?;

    let pid = std::process::id();
    let ns = format!("dpdemo-{pid}");
    let dir = std::env::temp_dir().join(format!("dpdemo-{pid}"));
    let bpffs = PathBuf::from(format!("/sys/fs/bpf/dpdemo-{pid}"));
    // Dropped last (declared first): netns, pins and tempdir go after the daemon.
    let mut cleanup = Cleanup::default();

    p.step(&format!("namespace {ns} and the daemon in it"));
    cleanup.dir(&dir)?;
    cleanup.path(&bpffs);
    cleanup.netns(&ns)?;
    let mut d = Daemon::start(&bin, &ns, &dir, &bpffs, Duration::from_secs(20))?;
    println!(
        "# daemon in netns {ns} (nsenter --net=/var/run/netns/{ns}), socket {}",
        d.sock.display()
    );
    println!("$ export DATAPLANE_HOST={}\n", d.host());

    p.step("network create --subnet 10.88.0.0/24 demo");
    let out = d.cli(&["network", "create", "--subnet", "10.88.0.0/24", "demo"])?;
    show("dataplane network create --subnet 10.88.0.0/24 demo", &out);
    show("dataplane network ls", &d.cli(&["network", "ls"])?);

    p.step("run web and client");
    let web = d.run("web", "demo", &["sh", "-c", WEB])?;
    show(
        &format!("dataplane run -d --name web --network demo -- sh -c '{WEB}'"),
        &format!("({}: sandbox {}, {})", web.name, web.netns, web.ip),
    );
    let client = d.run("client", "demo", &["sleep", "infinity"])?;
    show(
        "dataplane run -d --name client --network demo -- sleep infinity",
        &format!("({}: sandbox {}, {})", client.name, client.netns, client.ip),
    );
    show("dataplane ps", &d.cli(&["ps"])?);
    let before = redirected(&d)?;

    p.step(&format!("ping web ({}) from client", web.ip));
    let ping = d.cli(&[
        "exec", "client", "--", "ping", "-c", "3", "-W", "2", &web.ip,
    ])?;
    show(
        &format!("dataplane exec client -- ping -c 3 {}", web.ip),
        &ping,
    );

    p.step("fetch from web over TCP");
    let got = lab::poll(Duration::from_secs(15), Duration::from_millis(300), || {
        let o = sh::capture(
            &mut d.client(&["exec", "client", "--", "nc", "-w", "3", &web.ip, "8080"]),
            Some(Duration::from_secs(20)),
        )?;
        Ok(o.stdout.contains("hello-from-web").then_some(o.stdout))
    })?;
    let Some(got) = got else {
        bail!("no answer from web:8080 over TCP within 15 s");
    };
    show(
        &format!("dataplane exec client -- nc -w 3 {} 8080", web.ip),
        &got,
    );

    p.step("no Linux bridge in the daemon's namespace");
    let bridges = lab::ip(&ns, &["-d", "link", "show", "type", "bridge"])?;
    show(
        &format!("ip -n {ns} -d link show type bridge"),
        if bridges.trim().is_empty() {
            "(none)"
        } else {
            &bridges
        },
    );
    if !bridges.trim().is_empty() {
        bail!("a Linux bridge exists in {ns}; the eBPF path should need none");
    }
    show(
        &format!("ip -n {ns} -br link"),
        &lab::ip(&ns, &["-br", "link"])?,
    );

    p.step("eBPF counters");
    let after = redirected(&d)?;
    show("dataplane stats", &d.cli(&["stats"])?);
    println!(
        "redirected packets: {before} before the ping, {after} after the TCP fetch (+{})",
        after.saturating_sub(before)
    );
    if after <= before {
        bail!("the redirected counters did not increase: traffic did not take the eBPF path");
    }
    println!("\ndemo OK: web and client talk through bpf_redirect_peer, no bridge, no iptables.");
    drop(d);
    drop(cleanup);
    Ok(())
}
