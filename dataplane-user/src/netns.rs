//! Network namespaces and the netlink work on them: sandboxes, veth pairs,
//! addresses and routes.
//!
//! Netlink sockets talk to the namespace of the thread that opened them, so
//! every operation inside a sandbox runs on a short-lived thread that first
//! `setns`es into it and opens its own rtnetlink connection there. The
//! daemon's own namespace is the one it was started in (`nsenter --net=...`).

use std::{
    fs::File,
    future::Future,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, Context as _, Result};
use futures::TryStreamExt as _;
use nix::{
    mount::{mount, umount2, MntFlags, MsFlags},
    sched::{setns, unshare, CloneFlags},
};
use rtnetlink::{
    packet_route::{
        link::{InfoData, InfoKind, InfoVeth},
        route::RouteScope,
    },
    Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

use crate::model::Mac;

/// Where named network namespaces live, as `ip netns` keeps them.
pub const NETNS_DIR: &str = "/var/run/netns";

pub fn path_of(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Runs `f` on a fresh thread inside the network namespace at `netns` (or the
/// daemon's own when `None`), with an rtnetlink handle bound to it.
pub fn with_netlink<T, F, Fut>(netns: Option<&Path>, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
{
    let netns = netns.map(Path::to_path_buf);
    std::thread::spawn(move || -> Result<T> {
        if let Some(p) = &netns {
            enter(p)?;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let (conn, handle, _) = rtnetlink::new_connection().context("opening netlink")?;
            tokio::spawn(conn);
            f(handle).await
        })
    })
    .join()
    .map_err(|_| anyhow!("netlink worker thread panicked"))?
}

/// Moves the calling thread into the network namespace at `path`.
fn enter(path: &Path) -> Result<()> {
    let f = File::open(path).with_context(|| format!("opening netns {}", path.display()))?;
    setns(f, CloneFlags::CLONE_NEWNET).with_context(|| format!("entering netns {}", path.display()))
}

/// Creates the named network namespace `NETNS_DIR/name`, as `ip netns add`
/// does: a new namespace kept alive by a bind mount.
pub fn create(name: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(NETNS_DIR)?;
    let path = path_of(name);
    File::options()
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let target = path.clone();
    let made = std::thread::spawn(move || -> Result<()> {
        unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .context("bind-mounting the new netns")?;
        Ok(())
    })
    .join()
    .map_err(|_| anyhow!("netns thread panicked"))?;
    if let Err(e) = made {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

/// Deletes a named network namespace (unmount and remove its file). A missing
/// one is not an error.
pub fn delete(name: &str) -> Result<()> {
    let path = path_of(name);
    if !path.exists() {
        return Ok(());
    }
    let _ = umount2(&path, MntFlags::MNT_DETACH);
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))
}

/// Writes a sysctl under /proc/sys/net in the namespace of the calling thread.
fn sysctl(key: &str, value: &str) -> Result<()> {
    let p = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::write(&p, value).with_context(|| format!("writing {p}"))
}

async fn index_of(h: &Handle, name: &str) -> Result<u32> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    let msg = links
        .try_next()
        .await
        .with_context(|| format!("looking up link {name}"))?
        .ok_or_else(|| anyhow!("no link named {name}"))?;
    Ok(msg.header.index)
}

async fn set_up(h: &Handle, index: u32) -> Result<()> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await?;
    Ok(())
}

/// Brings up `lo` in a fresh sandbox and turns off IPv6 there (this datapath
/// carries IPv4 only for now, and IPv6 router solicitations would only be
/// counted as drops).
pub fn prepare_sandbox(netns: &Path) -> Result<()> {
    with_netlink(Some(netns), |h| async move {
        sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        set_up(&h, index_of(&h, "lo").await?).await
    })
}

/// Everything needed to plumb one endpoint.
#[derive(Clone, Debug)]
pub struct VethPlan {
    pub host_ifname: String,
    /// ifindex to create the host side with (see `dataplane_common::IFINDEX_BASE`).
    pub host_ifindex: u32,
    pub host_mac: Mac,
    pub netns: PathBuf,
    /// Give the peer its address, link state and routes. Without (a Docker
    /// endpoint, whose peer stays in the daemon's namespace), the peer only
    /// gets its name, MAC and MTU: Docker moves and configures it.
    pub configure_peer: bool,
    pub ifname: String,
    pub mac: Mac,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    /// Install the default route via the gateway (first non-internal network).
    pub default_route: bool,
    /// The MTU of both ends, if not the default (an overlay network's is
    /// the tunnel's: the underlay's minus the VXLAN overhead).
    pub mtu: Option<u32>,
    /// Route the endpoint's address to its veth from the gateway on `lo`
    /// (the bridge kinds); a VLAN network's gateway is the LAN's router,
    /// and its containers are reached on the LAN.
    pub host_route: bool,
}

/// Creates the veth pair (host side in the daemon's namespace, the other end
/// directly in the sandbox), configures both ends and the host route to the
/// endpoint. Returns the host side's ifindex. On error, nothing is left.
pub fn create_endpoint(plan: &VethPlan) -> Result<u32> {
    let p = plan.clone();
    let tmp_peer = format!("{}p", p.host_ifname);
    let ns_file = File::open(&p.netns).with_context(|| format!("opening {}", p.netns.display()))?;
    let peer_tmp = tmp_peer.clone();
    let host_index = with_netlink(None, move |h| async move {
        let mut peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer_tmp)
            .address(p.mac.0.to_vec())
            .setns_by_fd(ns_file.as_raw_fd());
        if let Some(m) = p.mtu {
            peer = peer.mtu(m);
        }
        let mut veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .index(p.host_ifindex)
            .name(p.host_ifname.clone())
            .address(p.host_mac.0.to_vec());
        if let Some(m) = p.mtu {
            veth = veth.mtu(m);
        }
        let veth = veth
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
            .build();
        h.link()
            .add(veth)
            .execute()
            .await
            .with_context(|| format!("creating veth {}", p.host_ifname))?;
        drop(ns_file);
        index_of(&h, &p.host_ifname).await
    })?;
    let res = configure_endpoint(plan, &tmp_peer, host_index);
    if res.is_err() {
        let _ = delete_link(&plan.host_ifname);
    }
    res.map(|()| host_index)
}

fn configure_endpoint(plan: &VethPlan, tmp_peer: &str, host_index: u32) -> Result<()> {
    configure_endpoint_in_sandbox(plan, tmp_peer)?;
    configure_host_side(plan, host_index)
}

/// The sandbox half of an endpoint: the link `tmp_peer` there gets its
/// name and (unless Docker configures it) its address, state and route.
fn configure_endpoint_in_sandbox(plan: &VethPlan, tmp_peer: &str) -> Result<()> {
    let p = plan.clone();
    let tmp_peer = tmp_peer.to_string();
    with_netlink(Some(&plan.netns.clone()), move |h| async move {
        let idx = index_of(&h, &tmp_peer).await?;
        h.link()
            .set(
                LinkUnspec::new_with_index(idx)
                    .name(p.ifname.clone())
                    .build(),
            )
            .execute()
            .await
            .with_context(|| format!("renaming {tmp_peer} to {}", p.ifname))?;
        if !p.configure_peer {
            return Ok(());
        }
        // A DHCP endpoint gets its address once the server gave one
        // (`sync_address`); until then its link is up without one.
        if !p.ip.is_unspecified() {
            h.address()
                .add(idx, IpAddr::V4(p.ip), p.prefix)
                .execute()
                .await
                .with_context(|| format!("adding {}/{} to {}", p.ip, p.prefix, p.ifname))?;
        }
        set_up(&h, idx).await?;
        if p.default_route && !p.ip.is_unspecified() {
            h.route()
                .add(
                    RouteMessageBuilder::<Ipv4Addr>::new()
                        .gateway(p.gateway)
                        .output_interface(idx)
                        .build(),
                )
                .execute()
                .await
                .context("adding the default route")?;
        }
        Ok(())
    })
}

fn configure_host_side(plan: &VethPlan, host_index: u32) -> Result<()> {
    let p = plan.clone();
    with_netlink(None, move |h| async move {
        sysctl(
            &format!("net.ipv6.conf.{}.disable_ipv6", p.host_ifname),
            "1",
        )?;
        set_up(&h, host_index).await?;
        if let Err(e) = steer_rx(&p.host_ifname, host_index) {
            tracing::warn!(veth = %p.host_ifname, "receive steering not set, a TCP stream may see reordering: {e:#}");
        }
        if !p.host_route {
            return Ok(());
        }
        // The host reaches the endpoint through its veth, from the gateway
        // address (which sits on `lo`, see `ensure_gateway`).
        h.route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(p.ip, 32)
                    .output_interface(host_index)
                    .pref_source(p.gateway)
                    .scope(RouteScope::Link)
                    .build(),
            )
            .execute()
            .await
            .with_context(|| format!("adding the host route to {}", p.ip))?;
        Ok(())
    })
}

/// Entries of the per-queue RFS flow table on a host-side veth (rounded up
/// to a power of two by the kernel; 8 bytes each).
const RPS_FLOW_CNT: u32 = 1024;

/// Turns on receive flow steering (RPS with RFS) on the receive queue of the
/// host-side veth `name` (ifindex `index`), if the host has RFS on.
///
/// Why: a container's frames reach the host side through `veth_xmit` ->
/// `netif_rx`, i.e. the backlog of the CPU that sent them. A TCP sender
/// transmits from two CPUs (its process, and the softirq that takes its ACKs,
/// which runs where the receiver is), so one flow fills two per-CPU backlogs
/// that drain independently and the receiver gets segments out of order; on
/// a one-hop path the sender's reordering window (a quarter of a ~20 us RTT)
/// is too short and it retransmits what was only late. With RFS every frame
/// of a flow is queued on one CPU, the one its receiving socket is read on,
/// and moves only once that queue has drained: in order, and same-core
/// traffic stays on its core. RPS without the host's RFS table would pick
/// the CPU by hash and send about half of the same-core flows across cores
/// (twice the round trip), so nothing is set then; the table
/// (`net.core.rps_sock_flow_entries`, host-wide, init namespace only) is
/// the operator's to size, not this daemon's.
fn steer_rx(name: &str, index: u32) -> Result<()> {
    if rfs_entries()? == 0 {
        return Ok(());
    }
    let cpus = std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .context("reading the possible CPUs")?;
    set_rps(name, index, &cpu_mask(cpus.trim())?, RPS_FLOW_CNT)
}

/// Writes `rps_cpus` and `rps_flow_cnt` of the receive queue of device
/// `name` (ifindex `index`) in the calling thread's network namespace.
fn set_rps(name: &str, index: u32, mask: &str, flow_cnt: u32) -> Result<()> {
    let (name, mask) = (name.to_string(), mask.to_string());
    // The daemon may run in a namespace whose devices the mounted /sys does
    // not show (`nsenter --net`): use a sysfs of this namespace, mounted in
    // a mount namespace private to a short-lived thread.
    std::thread::spawn(move || -> Result<()> {
        unshare(CloneFlags::CLONE_NEWNS).context("unshare(CLONE_NEWNS)")?;
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .context("making the thread's mounts private")?;
        mount(
            Some("sysfs"),
            "/sys",
            Some("sysfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .context("mounting a sysfs of the daemon's namespace")?;
        let dev = Path::new("/sys/class/net").join(&name);
        let found = std::fs::read_to_string(dev.join("ifindex"))
            .with_context(|| format!("reading the ifindex of {name}"))?;
        if found.trim() != index.to_string() {
            anyhow::bail!("sysfs shows {name} at ifindex {} not {index}", found.trim());
        }
        let q = dev.join("queues/rx-0");
        std::fs::write(q.join("rps_flow_cnt"), flow_cnt.to_string())
            .with_context(|| format!("writing rps_flow_cnt of {name}"))?;
        std::fs::write(q.join("rps_cpus"), &mask)
            .with_context(|| format!("writing rps_cpus of {name}"))?;
        Ok(())
    })
    .join()
    .map_err(|_| anyhow!("sysfs thread panicked"))?
}

/// Size of the host's RFS socket flow table (0: RFS off, or not visible).
/// The sysctl exists in the initial network namespace only: a daemon
/// started in another one reads it from there if it may open PID 1's
/// namespace, and otherwise takes RFS as off.
fn rfs_entries() -> Result<u32> {
    const KEY: &str = "/proc/sys/net/core/rps_sock_flow_entries";
    let v = match std::fs::read_to_string(KEY) {
        Ok(v) => v,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let from_init = std::thread::spawn(|| -> Result<String> {
                enter(Path::new("/proc/1/ns/net"))?;
                Ok(std::fs::read_to_string(KEY)?)
            })
            .join()
            .map_err(|_| anyhow!("sysctl thread panicked"))?;
            match from_init {
                Ok(v) => v,
                Err(_) => return Ok(0),
            }
        }
        Err(e) => return Err(e).context("reading net.core.rps_sock_flow_entries"),
    };
    v.trim()
        .parse()
        .with_context(|| format!("net.core.rps_sock_flow_entries is {v:?}"))
}

/// The hex CPU mask sysfs takes for `rps_cpus` (32-bit words, most
/// significant first, comma-separated) of a kernel CPU list such as
/// `0-3,8`.
fn cpu_mask(list: &str) -> Result<String> {
    let mut words: Vec<u32> = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<usize>()?, b.parse::<usize>()?),
            None => {
                let a = part.parse::<usize>()?;
                (a, a)
            }
        };
        if a > b || b >= 8192 {
            anyhow::bail!("bad CPU range {part:?}");
        }
        for cpu in a..=b {
            if words.len() <= cpu / 32 {
                words.resize(cpu / 32 + 1, 0);
            }
            words[cpu / 32] |= 1 << (cpu % 32);
        }
    }
    if words.is_empty() {
        anyhow::bail!("empty CPU list");
    }
    Ok(words
        .iter()
        .rev()
        .map(|w| format!("{w:08x}"))
        .collect::<Vec<_>>()
        .join(","))
}

/// Creates a veth pair `name`/`peer` in the calling thread's namespace, with
/// `name` at ifindex `index` (used by xtask's `bench-prog` and the tests).
pub fn add_veth(name: &str, peer: &str, index: u32) -> Result<()> {
    let (name, peer) = (name.to_string(), peer.to_string());
    with_netlink(None, move |h| async move {
        h.link()
            .add(LinkVeth::new(&name, &peer).index(index).build())
            .execute()
            .await
            .with_context(|| format!("creating veth {name} at ifindex {index}"))?;
        Ok(())
    })
}

/// Names of every link in the daemon's namespace.
pub fn link_names() -> Result<Vec<String>> {
    Ok(links()?.into_iter().map(|(name, _)| name).collect())
}

/// SIGKILLs every process whose network namespace is the named one, so that
/// the namespace can go away when it is deleted.
pub fn kill_processes_in(name: &str) {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(target) = std::fs::metadata(path_of(name)) else {
        return;
    };
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in procs.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let same = std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .is_ok_and(|m| m.ino() == target.ino() && m.dev() == target.dev());
        if same {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Whether `e` says a link could not be created because its requested
/// ifindex is taken (by a device this daemon does not know of).
pub fn is_ifindex_taken(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<rtnetlink::Error>(),
            Some(rtnetlink::Error::NetlinkError(m))
                if m.raw_code() == -libc::EEXIST || m.raw_code() == -libc::EBUSY
        )
    })
}

/// Deletes a link in the daemon's namespace (deleting one end of a veth
/// deletes both). A missing link is not an error.
pub fn delete_link(name: &str) -> Result<()> {
    let name = name.to_string();
    with_netlink(None, move |h| async move {
        let Ok(idx) = index_of(&h, &name).await else {
            return Ok(());
        };
        h.link()
            .del(idx)
            .execute()
            .await
            .with_context(|| format!("deleting link {name}"))?;
        Ok(())
    })
}

/// The label of every gateway address the daemon puts on `lo`. The kernel
/// keeps an IPv4 address's label per address, so it tells the daemon's
/// addresses from any other on `lo` (127.0.0.1, an address a host
/// administrator added): only labelled ones are ever removed.
pub const GATEWAY_LABEL: &str = "lo:dp";

/// `lo`'s ifindex, in every network namespace.
const LO: u32 = 1;

/// The /32 addresses `gw` on `lo`: (whether it carries [`GATEWAY_LABEL`],
/// the message to delete it with).
async fn gateway_addresses(
    h: &Handle,
    gw: Ipv4Addr,
) -> Result<Vec<(bool, rtnetlink::packet_route::address::AddressMessage)>> {
    use rtnetlink::packet_route::address::AddressAttribute;
    let mut addrs = h.address().get().set_link_index_filter(LO).execute();
    let mut out = Vec::new();
    while let Some(msg) = addrs.try_next().await? {
        let is_gw = msg.header.prefix_len == 32
            && msg
                .attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Local(IpAddr::V4(ip)) if *ip == gw));
        if is_gw {
            let ours = msg
                .attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Label(l) if l == GATEWAY_LABEL));
            out.push((ours, msg));
        }
    }
    Ok(out)
}

/// Puts the gateway address on `lo` of the daemon's namespace as a /32
/// labelled [`GATEWAY_LABEL`], so that the host answers for it and sources
/// its packets to containers from it. There is no bridge device to carry
/// it. Idempotent. An unlabelled `gw/32` already there (the host's, not the
/// daemon's) is left alone and not adopted: the host answers for it anyway,
/// and [`remove_gateway`] will not take it away.
pub fn ensure_gateway(gw: Ipv4Addr) -> Result<()> {
    with_netlink(None, move |h| async move {
        let mut add = h.address().add(LO, IpAddr::V4(gw), 32);
        add.message_mut().attributes.push(
            rtnetlink::packet_route::address::AddressAttribute::Label(GATEWAY_LABEL.into()),
        );
        match add.execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {
                if !gateway_addresses(&h, gw)
                    .await?
                    .iter()
                    .any(|(ours, _)| *ours)
                {
                    tracing::warn!(
                        gateway = %gw,
                        "{gw}/32 is already on lo without the {GATEWAY_LABEL} label: \
                         using it, but it is the host's and will not be removed"
                    );
                }
                Ok(())
            }
            Err(e) => Err(e).with_context(|| format!("adding gateway {gw} to lo")),
        }
    })
}

/// Every gateway this daemon put on `lo` (labelled [`GATEWAY_LABEL`]).
pub fn labelled_gateways() -> Result<Vec<Ipv4Addr>> {
    use rtnetlink::packet_route::address::AddressAttribute;
    with_netlink(None, |h| async move {
        let mut addrs = h.address().get().set_link_index_filter(LO).execute();
        let mut out = Vec::new();
        while let Some(msg) = addrs.try_next().await? {
            let ours = msg
                .attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Label(l) if l == GATEWAY_LABEL));
            for a in &msg.attributes {
                if let (true, AddressAttribute::Local(IpAddr::V4(ip))) = (ours, a) {
                    out.push(*ip);
                }
            }
        }
        Ok(out)
    })
}

/// Removes the daemon's gateway address `gw/32` (labelled [`GATEWAY_LABEL`])
/// from `lo`; any other address on `lo`, the same one unlabelled included,
/// stays. A missing one is not an error.
pub fn remove_gateway(gw: Ipv4Addr) -> Result<()> {
    with_netlink(None, move |h| async move {
        for (ours, msg) in gateway_addresses(&h, gw).await? {
            if ours {
                h.address()
                    .del(msg)
                    .execute()
                    .await
                    .with_context(|| format!("removing gateway {gw} from lo"))?;
            }
        }
        Ok(())
    })
}

/// Every link of the daemon's namespace: (name, ifindex).
pub fn links() -> Result<Vec<(String, u32)>> {
    with_netlink(None, |h| async move {
        let mut links = h.link().get().execute();
        let mut out = Vec::new();
        while let Some(msg) = links.try_next().await? {
            for a in msg.attributes {
                if let rtnetlink::packet_route::link::LinkAttribute::IfName(n) = a {
                    out.push((n, msg.header.index));
                }
            }
        }
        Ok(out)
    })
}

/// Every IPv4 address of the daemon's namespace (gateways on `lo` included).
pub fn addresses() -> Result<Vec<Ipv4Addr>> {
    with_netlink(None, |h| async move {
        let mut addrs = h.address().get().execute();
        let mut out = Vec::new();
        while let Some(msg) = addrs.try_next().await? {
            for a in msg.attributes {
                if let rtnetlink::packet_route::address::AddressAttribute::Local(IpAddr::V4(ip)) = a
                {
                    out.push(ip);
                }
            }
        }
        Ok(out)
    })
}

/// The device that holds `addr` in the daemon's namespace: its ifindex and
/// MTU (the underlay end of the tunnel, `--advertise-addr`).
pub fn device_of_address(addr: Ipv4Addr) -> Result<(u32, u32)> {
    use rtnetlink::packet_route::{address::AddressAttribute, link::LinkAttribute};
    with_netlink(None, move |h| async move {
        let mut addrs = h.address().get().execute();
        let mut index = None;
        while let Some(msg) = addrs.try_next().await? {
            let holds = msg.attributes.iter().any(|a| {
                matches!(a, AddressAttribute::Local(IpAddr::V4(ip)) | AddressAttribute::Address(IpAddr::V4(ip)) if *ip == addr)
            });
            if holds {
                index = Some(msg.header.index);
                break;
            }
        }
        let index = index.with_context(|| {
            format!("no interface of this host has the advertised address {addr}")
        })?;
        let mut links = h.link().get().match_index(index).execute();
        let msg = links
            .try_next()
            .await?
            .with_context(|| format!("interface {index} vanished"))?;
        let mtu = msg
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            })
            .unwrap_or(1500);
        Ok((index, mtu))
    })
}

/// Turns IPv4 forwarding on in the daemon's namespace (as Docker does): the
/// translated paths route between containers and uplinks, and the kernel's
/// FIB lookup for BPF refuses to route from a device that does not forward.
pub fn enable_forwarding() -> Result<()> {
    sysctl("net.ipv4.ip_forward", "1")
}

/// The /32 routes of the daemon's main table with their output interface:
/// the host routes to endpoints (see `configure_endpoint`), for drift checks.
pub fn host_routes32() -> Result<std::collections::HashSet<(Ipv4Addr, u32)>> {
    use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
    with_netlink(None, |h| async move {
        let mut routes = h
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let mut out = std::collections::HashSet::new();
        while let Some(msg) = routes.try_next().await? {
            if msg.header.destination_prefix_length != 32 {
                continue;
            }
            let mut dst = None;
            let mut oif = None;
            for a in &msg.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = Some(*ip),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            if let (Some(d), Some(o)) = (dst, oif) {
                out.insert((d, o));
            }
        }
        Ok(out)
    })
}

/// Adds the host route to an endpoint at `ip` through its host veth
/// `ifindex`, sourced from `gateway` (as `configure_endpoint` makes it). An
/// existing one is not an error.
pub fn ensure_host_route(ip: Ipv4Addr, ifindex: u32, gateway: Ipv4Addr) -> Result<()> {
    with_netlink(None, move |h| async move {
        let r = h
            .route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(ip, 32)
                    .output_interface(ifindex)
                    .pref_source(gateway)
                    .scope(RouteScope::Link)
                    .build(),
            )
            .execute()
            .await;
        match r {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
            Err(e) => Err(e).with_context(|| format!("adding the host route to {ip}")),
        }
    })
}

/// Brings link `ifindex` of the daemon's namespace up (a host veth set down
/// by hand is drift too).
pub fn set_link_up(ifindex: u32) -> Result<()> {
    with_netlink(None, move |h| async move { set_up(&h, ifindex).await })
}

/// The ifindex of host interface `name` if it exists and is up (what a
/// macvlan network's parent must be), or why not.
pub fn check_parent(name: &str) -> Result<u32> {
    let name = name.to_string();
    with_netlink(None, move |h| async move {
        let mut links = h.link().get().match_name(name.clone()).execute();
        let msg = match links.try_next().await {
            Ok(Some(m)) => m,
            _ => anyhow::bail!("parent interface {name} does not exist on this host"),
        };
        let up = msg
            .header
            .flags
            .contains(rtnetlink::packet_route::link::LinkFlags::Up);
        anyhow::ensure!(
            up,
            "parent interface {name} is down (bring it up first: ip link set {name} up)"
        );
        Ok(msg.header.index)
    })
}

/// The kernel's macvlan mode called `mode` (checked names, see
/// `validate::MACVLAN_MODES`).
fn macvlan_mode(mode: &str) -> rtnetlink::packet_route::link::MacVlanMode {
    use rtnetlink::packet_route::link::MacVlanMode as M;
    match mode {
        "private" => M::Private,
        "vepa" => M::Vepa,
        "passthru" => M::Passthrough,
        _ => M::Bridge,
    }
}

/// Creates the endpoint of `plan` as a macvlan device on `parent` (mode
/// `mode`), made in the daemon's namespace under the temporary name
/// `plan.host_ifname` and moved straight into the sandbox, where it gets
/// its name, address and default route. Nothing stays on the host side.
/// On error, nothing is left.
pub fn create_macvlan(plan: &VethPlan, parent: &str, mode: &str) -> Result<()> {
    let parent_index = check_parent(parent)?;
    let p = plan.clone();
    let mode = macvlan_mode(mode);
    let ns_file = File::open(&p.netns).with_context(|| format!("opening {}", p.netns.display()))?;
    with_netlink(None, move |h| async move {
        let mut m = rtnetlink::LinkMacVlan::new(&p.host_ifname, parent_index, mode)
            .address(p.mac.0.to_vec())
            .setns_by_fd(ns_file.as_raw_fd());
        if let Some(mtu) = p.mtu {
            m = m.mtu(mtu);
        }
        h.link().add(m.build()).execute().await.with_context(|| {
            format!(
                "creating macvlan {} on {}",
                p.host_ifname,
                p.netns.display()
            )
        })?;
        Ok(())
    })?;
    let res = configure_endpoint_in_sandbox(plan, &plan.host_ifname);
    if res.is_err() {
        let _ = delete_link_in(&plan.netns, &plan.host_ifname);
        let _ = delete_link_in(&plan.netns, &plan.ifname);
    }
    res
}

/// Makes `ifname` in the sandbox at `netns` hold exactly the IPv4 address
/// `want` (none: every IPv4 address goes), with a default route via
/// `gateway` when given: a DHCP endpoint's lease, as it comes and goes.
pub fn sync_address(
    netns: &Path,
    ifname: &str,
    want: Option<(Ipv4Addr, u8)>,
    gateway: Option<Ipv4Addr>,
) -> Result<()> {
    use rtnetlink::packet_route::address::AddressAttribute;
    let ifname = ifname.to_string();
    with_netlink(Some(netns), move |h| async move {
        let idx = index_of(&h, &ifname).await?;
        let mut addrs = h.address().get().set_link_index_filter(idx).execute();
        let mut have = Vec::new();
        while let Some(msg) = addrs.try_next().await? {
            let ip = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = ip {
                have.push((ip, msg.header.prefix_len, msg));
            }
        }
        let mut present = false;
        for (ip, prefix, msg) in have {
            if want == Some((ip, prefix)) {
                present = true;
            } else {
                h.address()
                    .del(msg)
                    .execute()
                    .await
                    .with_context(|| format!("removing {ip}/{prefix} from {ifname}"))?;
            }
        }
        let Some((ip, prefix)) = want else {
            return Ok(());
        };
        if !present {
            h.address()
                .add(idx, IpAddr::V4(ip), prefix)
                .execute()
                .await
                .with_context(|| format!("adding {ip}/{prefix} to {ifname}"))?;
        }
        if let Some(gw) = gateway {
            let mut routes = h
                .route()
                .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
                .execute();
            let mut has_default = false;
            while let Some(r) = routes.try_next().await? {
                if r.header.destination_prefix_length == 0 {
                    has_default = true;
                }
            }
            if !has_default {
                h.route()
                    .add(
                        RouteMessageBuilder::<Ipv4Addr>::new()
                            .gateway(gw)
                            .output_interface(idx)
                            .build(),
                    )
                    .execute()
                    .await
                    .with_context(|| format!("adding the default route via {gw}"))?;
            }
        }
        Ok(())
    })
}

/// Deletes link `name` inside the sandbox at `netns` (gone already: fine).
pub fn delete_link_in(netns: &Path, name: &str) -> Result<()> {
    if !netns.exists() {
        return Ok(());
    }
    let name = name.to_string();
    with_netlink(Some(netns), move |h| async move {
        let Ok(idx) = index_of(&h, &name).await else {
            return Ok(());
        };
        h.link()
            .del(idx)
            .execute()
            .await
            .with_context(|| format!("deleting link {name}"))?;
        Ok(())
    })
}

/// Whether link `name` exists inside the sandbox at `netns`.
pub fn link_exists_in(netns: &Path, name: &str) -> Result<bool> {
    let name = name.to_string();
    with_netlink(Some(netns), move |h| async move {
        Ok(index_of(&h, &name).await.is_ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ip -4 -o addr show dev lo` in the calling thread's namespace:
    /// (address/prefix, label) pairs.
    fn lo_addresses() -> Vec<(String, String)> {
        let out = std::process::Command::new("ip")
            .args(["-4", "-o", "addr", "show", "dev", "lo"])
            .output()
            .expect("running ip");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let at = f.iter().position(|w| *w == "inet")?;
                // `inet A/P [brd B] scope S LABEL`.
                let scope = f.iter().position(|w| *w == "scope")?;
                let label = f.get(scope + 2)?.trim_end_matches('\\');
                Some((f[at + 1].to_string(), label.to_string()))
            })
            .collect()
    }

    #[test]
    fn only_addresses_the_daemon_labelled_leave_lo() {
        let done = crate::testutil::try_in_private_netns(|| {
            let ip = |args: &[&str]| {
                std::process::Command::new("ip")
                    .args(args)
                    .status()
                    .is_ok_and(|s| s.success())
            };
            assert!(ip(&["link", "set", "lo", "up"]));
            assert!(ip(&["addr", "add", "10.64.0.1/32", "dev", "lo"]));
            let mine: Ipv4Addr = "10.65.0.1".parse().unwrap();
            let hosts: Ipv4Addr = "10.64.0.1".parse().unwrap();

            ensure_gateway(mine).unwrap();
            ensure_gateway(mine).unwrap();
            // The host's /32 is used as it is, not adopted.
            ensure_gateway(hosts).unwrap();
            let addrs = lo_addresses();
            assert!(
                addrs.contains(&("10.65.0.1/32".into(), GATEWAY_LABEL.into())),
                "{addrs:?}"
            );
            assert!(
                addrs.contains(&("10.64.0.1/32".into(), "lo".into())),
                "{addrs:?}"
            );

            for gw in [hosts, mine, Ipv4Addr::LOCALHOST, mine] {
                remove_gateway(gw).unwrap();
            }
            let addrs = lo_addresses();
            assert_eq!(
                addrs,
                vec![
                    ("127.0.0.1/8".to_string(), "lo".to_string()),
                    ("10.64.0.1/32".into(), "lo".into()),
                ],
                "only the labelled gateway went"
            );
        });
        if done.is_none() {
            eprintln!("skipped: needs root for a private network namespace");
        }
    }
}

#[cfg(test)]
mod rps_tests {
    use super::{add_veth, cpu_mask, set_rps};
    use nix::sched::{unshare, CloneFlags};

    /// Needs root: a veth in a network namespace private to the test's
    /// thread (gone with it), seen through a sysfs of that namespace.
    #[test]
    fn rps_is_set_on_the_named_device_only() {
        std::thread::spawn(|| {
            unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
            add_veth("rpsh0", "rpsc0", 4321).expect("creating a veth");
            let err = set_rps("rpsh0", 4322, "00000001", 256).unwrap_err();
            assert!(format!("{err:#}").contains("not 4322"), "{err:#}");
            set_rps("rpsh0", 4321, "00000001", 256).expect("setting RPS");
            let read = |f: &str| {
                std::thread::spawn({
                    let f = f.to_string();
                    move || {
                        unshare(CloneFlags::CLONE_NEWNS).unwrap();
                        nix::mount::mount(
                            None::<&str>,
                            "/",
                            None::<&str>,
                            nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
                            None::<&str>,
                        )
                        .unwrap();
                        nix::mount::mount(
                            Some("sysfs"),
                            "/sys",
                            Some("sysfs"),
                            nix::mount::MsFlags::empty(),
                            None::<&str>,
                        )
                        .unwrap();
                        std::fs::read_to_string(format!("/sys/class/net/{f}")).unwrap()
                    }
                })
                .join()
                .unwrap()
            };
            // Printed as wide as the machine's CPU count: 1, 00000001, ...
            let cpus = read("rpsh0/queues/rx-0/rps_cpus");
            assert_eq!(cpus.trim().replace(',', "").trim_start_matches('0'), "1");
            assert_eq!(read("rpsh0/queues/rx-0/rps_flow_cnt").trim(), "256");
            assert_eq!(read("rpsc0/queues/rx-0/rps_flow_cnt").trim(), "0");
        })
        .join()
        .expect("test thread");
    }

    #[test]
    fn cpu_lists_become_sysfs_masks() {
        assert_eq!(cpu_mask("0").unwrap(), "00000001");
        assert_eq!(cpu_mask("0-1").unwrap(), "00000003");
        assert_eq!(cpu_mask("0-3,8").unwrap(), "0000010f");
        assert_eq!(cpu_mask("0,33").unwrap(), "00000002,00000001");
        assert!(cpu_mask("").is_err());
        assert!(cpu_mask("3-1").is_err());
        assert!(cpu_mask("x").is_err());
    }
}
