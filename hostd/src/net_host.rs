//! A host's Drover networks, plumbed for real: the bridge with the network's service
//! address (`tap`), and one `dnsmasq` per network (Debian's `dnsmasq-base`, as libvirt
//! runs it) serving DHCP with the addresses IPAM recorded, as static host entries only (a
//! NIC IPAM does not know gets nothing), and DNS for the names of the network's domains
//! (`<domain>` and `<domain>.<network>`), answered from its own tables only (no upstream
//! is asked). It advertises an MTU of [`GUEST_MTU`], which leaves room for an overlay's
//! headers. The service address is the same on every host serving the network, with the
//! same MAC (`driver::service_mac`): each host is its own guests' gateway, DHCP and DNS
//! server, and a NAT network's traffic leaves through the host its VM runs on.
//!
//! dnsmasq runs on as a daemon of its own, like a VM process: a restarted hostd finds it
//! by its pid file and keeps it. Its files live in [`SERVER_DIR`], named for the network
//! namespace and the bridge, so hostds that share a namespace (as `drover up`'s do)
//! share one server per network, and hostds in namespaces of their own each run theirs.
//! Each hostd serving a network marks itself a user of it there (`.user-<user>`, named by
//! [`user`]: the host's name and its run directory, since hosts of different clusters on
//! one machine may share a name); a hostd takes a network away only once it was the last
//! user, and never while a VM's tap is still in its bridge. Networks a hostd never marked
//! (other hosts', other clusters', other tests') are not its to touch.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use tracing::{info, warn};

use crate::networks::{NetworkPlan, NetworkWork};
use crate::tap;

/// Where every hostd of this machine keeps its DHCP servers' files.
pub const SERVER_DIR: &str = "/run/drover/net";
/// The MTU DHCP gives guests: what the overlay carries.
pub const GUEST_MTU: u32 = tap::OVERLAY_MTU;
/// How long a DHCP lease lasts (the address never changes; renewals are cheap).
const LEASE_TIME: &str = "1h";

/// The name a hostd marks its networks with: its host's name and a hash of its run
/// directory, which no two hostds of one machine share (a restarted hostd gets the same).
pub fn user(host: &str, run_dir: &Path) -> String {
    let run_dir = run_dir.canonicalize().unwrap_or_else(|_| run_dir.to_owned());
    format!("{host}@{:08x}", crate::driver::fnv32(&run_dir.to_string_lossy()))
}

/// Serve exactly `work`'s networks as `user` (see [`user`]); returns (network, error)
/// for those that failed.
pub fn serve(work: &NetworkWork, user: &str, dir: &Path) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    if let Err(e) = fs::create_dir_all(dir) {
        return work.networks.values().map(|p| (p.name.clone(), format!("{}: {e}", dir.display()))).collect();
    }
    let files = ServerFiles::new(dir);
    for plan in work.networks.values() {
        if let Err(e) = serve_one(plan, &files, user) {
            errors.push((plan.name.clone(), e));
        }
    }
    // Networks this host used and no longer serves.
    for bridge in files.used_by(user) {
        if work.networks.contains_key(&bridge) {
            continue;
        }
        if tap::has_taps(&bridge) {
            // A VM is still going (or another hostd's runs here): look again next pass.
            continue;
        }
        let _ = fs::remove_file(files.user_mark(&bridge, user));
        if !files.users(&bridge).is_empty() {
            continue;
        }
        info!(bridge = %bridge, "no VM uses the network on this host any more: taking it away");
        stop_server(&files, &bridge);
        tap::remove_network(&bridge);
    }
    errors
}

fn serve_one(plan: &NetworkPlan, files: &ServerFiles, user: &str) -> Result<(), String> {
    let mark = files.user_mark(&plan.bridge, user);
    if !mark.exists() {
        fs::write(&mark, b"").map_err(|e| format!("cannot write {}: {e}", mark.display()))?;
    }
    let prefix = plan.cidr.prefix_len;
    let address = format!("{}/{prefix}", plan.service_ip);
    let attachment = if plan.nat {
        crate::driver::Attachment::Nat {
            bridge: plan.bridge.clone(),
            gateway: address.clone(),
            network: plan.cidr.to_string(),
        }
    } else {
        crate::driver::Attachment::Isolated(plan.bridge.clone())
    };
    tap::bridge_for(&attachment)?;
    tap::set_mac(&plan.bridge, &crate::driver::service_mac(&plan.name))?;
    tap::serve_address(&plan.bridge, &address, !plan.nat)?;
    match plan.local {
        Some(local) if !local.is_loopback() => tap::overlay(&plan.bridge, plan.vni, local, &plan.peers)?,
        // Every host on this machine shares the one bridge: no overlay to build.
        _ => {}
    }
    let hosts =
        plan.leases.iter().map(|(mac, ip, domain)| format!("{mac},{ip},{domain}\n")).collect::<String>();
    let names = plan
        .leases
        .iter()
        .map(|(_, ip, domain)| format!("{ip} {domain} {domain}.{}\n", plan.name))
        .collect::<String>();
    let changed = write_if_changed(&files.path(&plan.bridge, "hosts"), &hosts)?
        | write_if_changed(&files.path(&plan.bridge, "names"), &names)?;
    match files.running(&plan.bridge) {
        Some(pid) if changed => {
            // dnsmasq reads its host files again on SIGHUP.
            signal(pid, rustix::process::Signal::HUP);
            Ok(())
        }
        Some(_) => Ok(()),
        None => start_server(plan, files),
    }
}

fn start_server(plan: &NetworkPlan, files: &ServerFiles) -> Result<(), String> {
    let cidr = plan.cidr;
    let mask = std::net::Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(cidr.prefix_len)).unwrap_or(0));
    let mut cmd = Command::new("dnsmasq");
    cmd.arg("--conf-file=/dev/null")
        .arg(format!("--pid-file={}", files.path(&plan.bridge, "pid").display()))
        .arg(format!("--interface={}", plan.bridge))
        .arg("--bind-interfaces")
        .arg("--except-interface=lo")
        .arg(format!("--listen-address={}", plan.service_ip))
        .arg(format!("--dhcp-range={},static,{mask},{LEASE_TIME}", cidr.network()))
        .arg(format!("--dhcp-hostsfile={}", files.path(&plan.bridge, "hosts").display()))
        .arg(format!("--addn-hosts={}", files.path(&plan.bridge, "names").display()))
        .arg("--no-hosts")
        .arg("--no-resolv")
        .arg(format!("--domain={}", plan.name))
        .arg(format!("--local=/{}/", plan.name))
        .arg("--dhcp-authoritative")
        .arg("--leasefile-ro")
        .arg(format!("--dhcp-option=option:mtu,{GUEST_MTU}"))
        .arg(format!("--dhcp-option=option:dns-server,{}", plan.service_ip))
        .arg("--user=nobody")
        .arg("--group=nogroup");
    if !plan.nat {
        // An isolated network routes nowhere: no default route for its guests.
        cmd.arg("--dhcp-option=option:router");
    }
    let out = cmd.output().map_err(|e| format!("cannot run dnsmasq (install dnsmasq-base): {e}"))?;
    if !out.status.success() {
        return Err(format!("dnsmasq: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    info!(network = %plan.name, bridge = %plan.bridge, "DHCP and DNS server started");
    Ok(())
}

fn stop_server(files: &ServerFiles, bridge: &str) {
    if let Some(pid) = files.running(bridge) {
        signal(pid, rustix::process::Signal::TERM);
    }
    for what in ["pid", "hosts", "names"] {
        let _ = fs::remove_file(files.path(bridge, what));
    }
}

fn signal(pid: u32, signal: rustix::process::Signal) {
    let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) else { return };
    if let Err(e) = rustix::process::kill_process(pid, signal) {
        warn!(pid = pid.as_raw_nonzero().get(), error = %e, "cannot signal the DHCP server");
    }
}

/// Write `text` to `path` (through a file beside it) unless it holds it already; returns
/// whether it changed.
fn write_if_changed(path: &Path, text: &str) -> Result<bool, String> {
    if fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(false);
    }
    let part = path.with_extension("part");
    fs::write(&part, text)
        .and_then(|()| fs::rename(&part, path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(true)
}

/// The files of this network namespace's DHCP servers.
struct ServerFiles {
    dir: PathBuf,
    /// The network namespace's inode: servers are per namespace.
    netns: String,
}

impl ServerFiles {
    fn new(dir: &Path) -> ServerFiles {
        let netns = fs::read_link("/proc/self/ns/net")
            .ok()
            .and_then(|l| l.to_str().map(|s| s.trim_start_matches("net:[").trim_end_matches(']').to_owned()))
            .unwrap_or_else(|| "0".into());
        ServerFiles { dir: dir.to_owned(), netns }
    }

    fn path(&self, bridge: &str, what: &str) -> PathBuf {
        self.dir.join(format!("{}-{bridge}.{what}", self.netns))
    }

    /// The mark that says `user` uses `bridge`'s network.
    fn user_mark(&self, bridge: &str, user: &str) -> PathBuf {
        self.path(bridge, &format!("user-{user}"))
    }

    /// The bridges of this namespace whose networks `user` marked itself a user of.
    fn used_by(&self, user: &str) -> Vec<String> {
        let suffix = format!(".user-{user}");
        let prefix = format!("{}-", self.netns);
        let Ok(entries) = fs::read_dir(&self.dir) else { return Vec::new() };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                Some(name.strip_prefix(&prefix)?.strip_suffix(&suffix)?.to_owned())
            })
            .collect()
    }

    /// Every hostd marked a user of `bridge`'s network in this namespace.
    fn users(&self, bridge: &str) -> Vec<String> {
        let prefix = format!("{}-{bridge}.user-", self.netns);
        let Ok(entries) = fs::read_dir(&self.dir) else { return Vec::new() };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().strip_prefix(&prefix).map(str::to_owned))
            .collect()
    }

    /// The pid of this bridge's running dnsmasq.
    fn running(&self, bridge: &str) -> Option<u32> {
        let pid: u32 = fs::read_to_string(self.path(bridge, "pid")).ok()?.trim().parse().ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let ours = String::from_utf8_lossy(&cmdline).contains(&format!("--interface={bridge}"));
        if !ours {
            warn!(bridge, pid, "the DHCP server's pid file names another process");
        }
        ours.then_some(pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two hostds named alike (hosts `h1` of two clusters on one machine, as concurrent
    /// tests run them): one that serves nothing leaves the other's network alone.
    #[test]
    fn hostds_of_one_name_in_different_run_dirs_leave_each_others_networks_alone() {
        let root = tempfile::tempdir().unwrap();
        let (a_dir, b_dir) = (root.path().join("a"), root.path().join("b"));
        fs::create_dir_all(&a_dir).unwrap();
        fs::create_dir_all(&b_dir).unwrap();
        let (a, b) = (user("h1", &a_dir), user("h1", &b_dir));
        assert_ne!(a, b);
        assert_eq!(a, user("h1", &a_dir.join("../a")), "a restarted hostd is the same user");

        let servers = root.path().join("net");
        fs::create_dir_all(&servers).unwrap();
        let files = ServerFiles::new(&servers);
        fs::write(files.user_mark("drvbtest0001", &a), b"").unwrap();
        let nothing = NetworkWork { host: "h1".into(), ..NetworkWork::default() };
        assert!(serve(&nothing, &b, &servers).is_empty());
        assert_eq!(files.users("drvbtest0001"), vec![a.clone()]);
        assert_eq!(files.used_by(&a), vec!["drvbtest0001".to_owned()]);
        assert!(files.used_by(&b).is_empty());
    }
}
