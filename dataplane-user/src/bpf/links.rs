//! Program links: `from_container` on each endpoint veth and `from_uplink`
//! on each host interface, attached through TCX and pinned so that they
//! outlive the daemon; a new daemon swaps its program into them.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use aya::programs::{
    links::{FdLink, PinnedLink},
    tc::{SchedClassifierLink, TcAttachOptions},
    LinkOrder, SchedClassifier, TcAttachType,
};

use super::Datapath;

impl Datapath {
    /// Attaches `from_container` to TC ingress of `ifname` and pins the link.
    /// If a pinned link is already there (a previous daemon made it), the new
    /// program replaces the old one in it atomically.
    pub fn attach(&mut self, ifname: &str) -> Result<()> {
        let pin = self.links_dir.join(ifname);
        self.attach_pinned("from_container", ifname, &pin)
    }

    fn uplinks_dir(&self) -> PathBuf {
        self.root.join("uplinks")
    }

    /// Attaches `from_uplink` to TC ingress of host interface `ifname`
    /// (ifindex `ifindex`), pinned as `uplinks/<ifindex>` (or swapped into
    /// that pin).
    pub fn attach_uplink(&mut self, ifname: &str, ifindex: u32) -> Result<()> {
        let dir = self.uplinks_dir();
        std::fs::create_dir_all(&dir)?;
        self.attach_pinned("from_uplink", ifname, &dir.join(ifindex.to_string()))
    }

    /// ifindexes of host interfaces with a pinned `from_uplink` link.
    pub fn pinned_uplinks(&self) -> Vec<u32> {
        std::fs::read_dir(self.uplinks_dir())
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Drops the pinned uplink link of `ifindex` (gone interfaces).
    pub fn detach_uplink(&mut self, ifindex: u32) {
        let _ = std::fs::remove_file(self.uplinks_dir().join(ifindex.to_string()));
    }

    fn attach_pinned(&mut self, prog_name: &str, ifname: &str, pin: &Path) -> Result<()> {
        let prog = self.prog(prog_name)?;
        let id = match PinnedLink::from_pin(pin) {
            Ok(old) => {
                let link: SchedClassifierLink = FdLink::from(old).try_into()?;
                prog.attach_to_link(link)
                    .with_context(|| format!("updating the program on {ifname}"))?
            }
            Err(_) => prog
                .attach_with_options(
                    ifname,
                    TcAttachType::Ingress,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .with_context(|| format!("attaching {prog_name} to {ifname}"))?,
        };
        let link: FdLink = prog.take_link(id)?.try_into()?;
        // The old pin (if any) still names the same link; re-pin after it goes.
        let _ = std::fs::remove_file(pin);
        link.pin(pin)
            .with_context(|| format!("pinning the link of {ifname}"))?;
        Ok(())
    }

    /// Drops the pinned link of `ifname` (the program detaches when the last
    /// reference goes; deleting the veth does that as well).
    pub fn detach(&mut self, ifname: &str) -> Result<()> {
        let pin = self.links_dir.join(ifname);
        match std::fs::remove_file(&pin) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("unpinning {}", pin.display()))
            }
            _ => Ok(()),
        }
    }

    /// Names of the interfaces with a pinned link.
    pub fn pinned_links(&self) -> Vec<String> {
        std::fs::read_dir(&self.links_dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether `from_container` is attached to TC ingress of `ifname` (a
    /// link detached by hand leaves its pin behind, defunct).
    pub fn is_attached(&self, ifname: &str) -> bool {
        SchedClassifier::query_tcx(ifname, TcAttachType::Ingress).is_ok_and(|(_, progs)| {
            progs
                .iter()
                .any(|p| p.name_as_str() == Some("from_container"))
        })
    }

    /// Attaches `from_container` to `ifname` afresh, dropping a pinned link
    /// that no longer holds it.
    pub fn reattach(&mut self, ifname: &str) -> Result<()> {
        let _ = std::fs::remove_file(self.links_dir.join(ifname));
        self.attach(ifname)
    }
}
