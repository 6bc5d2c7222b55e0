//! Host network plumbing for VM NICs: bridges and tap devices, made with iproute2
//! (`ip`), as libvirt does for its bridged networks, and for NAT networks the gateway
//! address on the bridge, IPv4 forwarding and iptables rules (masquerade what leaves the
//! network's range; forward out of the bridge, and back in only for connections made
//! from inside). Names are at most 15 bytes (`driver::isolated_bridge`,
//! `driver::tap_name`).
//!
//! Bridges and NAT rules stay when the last VM on them goes; the host's network pass
//! (`networks`, `net_host`) takes a network away once no VM of it runs on the host
//! (`remove_network`).

use std::process::Command;

use crate::driver::{tap_name, Attachment, VmSpec};

/// Most NICs per VM: the cluster's own limit (a driver may say less, as the own VMM does).
pub const NICS_MAX: usize = controlplane::limits::NICS_PER_DOMAIN_MAX;

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
}

fn exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// The bridge a NIC plugs into, created (up, no address) for an isolated network.
pub fn bridge_for(attachment: &Attachment) -> Result<String, String> {
    match attachment {
        Attachment::HostBridge(b) if exists(b) => Ok(b.clone()),
        Attachment::HostBridge(b) => Err(format!("host bridge {b:?} does not exist")),
        Attachment::Isolated(b) => {
            bridge_up(b)?;
            Ok(b.clone())
        }
        Attachment::Nat { bridge, gateway, network } => {
            bridge_up(bridge)?;
            ip(&["addr", "replace", gateway, "dev", bridge])?;
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
                .map_err(|e| format!("cannot turn on IPv4 forwarding: {e}"))?;
            for rule in nat_rules(bridge, network) {
                ensure_rule(&rule)?;
            }
            Ok(bridge.clone())
        }
        Attachment::Unsupported(reason) => Err(reason.clone()),
    }
}

/// Bridge `name`, created if missing, up.
fn bridge_up(name: &str) -> Result<(), String> {
    if !exists(name) {
        ip(&["link", "add", "name", name, "type", "bridge"])?;
    }
    ip(&["link", "set", name, "up"])
}

/// The iptables rules of a NAT network: (table, chain, rule), each tagged with a comment
/// naming the bridge.
fn nat_rules(bridge: &str, network: &str) -> Vec<(&'static str, &'static str, Vec<String>)> {
    let tag = format!("drover {bridge}");
    let rule = |parts: &[&str]| {
        let mut r: Vec<String> = parts.iter().map(|p| p.to_string()).collect();
        r.extend(["-m".into(), "comment".into(), "--comment".into(), tag.clone()]);
        r
    };
    vec![
        ("nat", "POSTROUTING", rule(&["-s", network, "!", "-d", network, "-j", "MASQUERADE"])),
        ("filter", "FORWARD", rule(&["-i", bridge, "-s", network, "-j", "ACCEPT"])),
        (
            "filter",
            "FORWARD",
            rule(&[
                "-o",
                bridge,
                "-d",
                network,
                "-m",
                "conntrack",
                "--ctstate",
                "RELATED,ESTABLISHED",
                "-j",
                "ACCEPT",
            ]),
        ),
    ]
}

fn iptables(table: &str, op: &str, chain: &str, rule: &[String]) -> Result<bool, String> {
    let out = Command::new("iptables")
        .args(["-w", "-t", table, op, chain])
        .args(rule)
        .output()
        .map_err(|e| format!("cannot run iptables (NAT networks need it): {e}"))?;
    if out.status.success() {
        return Ok(true);
    }
    if op == "-C" && out.status.code() == Some(1) {
        return Ok(false); // no such rule
    }
    Err(format!(
        "iptables -t {table} {op} {chain} {}: {}",
        rule.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

/// Add a rule unless it is there: first in FORWARD (ahead of any policy that drops),
/// last in POSTROUTING.
fn ensure_rule((table, chain, rule): &(&str, &str, Vec<String>)) -> Result<(), String> {
    if iptables(table, "-C", chain, rule)? {
        return Ok(());
    }
    let op = if *chain == "FORWARD" { "-I" } else { "-A" };
    iptables(table, op, chain, rule).map(|_| ())
}

/// Give `bridge` the MAC address `mac` (a bridge otherwise takes its first port's).
pub fn set_mac(bridge: &str, mac: &str) -> Result<(), String> {
    let now = std::fs::read_to_string(std::path::Path::new("/sys/class/net").join(bridge).join("address"))
        .unwrap_or_default();
    if now.trim() == mac {
        return Ok(());
    }
    ip(&["link", "set", "dev", bridge, "address", mac])
}

/// The address `addr` ("10.0.0.1/24") on `bridge`; for an isolated network also the
/// rules that keep the host from routing for it (nothing in or out of the bridge is
/// forwarded), as libvirt does for its isolated networks.
pub fn serve_address(bridge: &str, addr: &str, isolated: bool) -> Result<(), String> {
    ip(&["addr", "replace", addr, "dev", bridge])?;
    if isolated {
        for rule in isolation_rules(bridge) {
            ensure_rule(&rule)?;
        }
    }
    Ok(())
}

fn isolation_rules(bridge: &str) -> Vec<(&'static str, &'static str, Vec<String>)> {
    let tag = format!("drover {bridge}");
    let rule = |parts: &[&str]| {
        let mut r: Vec<String> = parts.iter().map(|p| p.to_string()).collect();
        r.extend(["-m".into(), "comment".into(), "--comment".into(), tag.clone()]);
        ("filter", "FORWARD", r)
    };
    // Each is put first in FORWARD in turn, so the last is checked first: guests of the
    // network reach each other (where bridged frames pass iptables, br_netfilter).
    vec![
        rule(&["-i", bridge, "-j", "REJECT"]),
        rule(&["-o", bridge, "-j", "REJECT"]),
        rule(&["-i", bridge, "-o", bridge, "-j", "ACCEPT"]),
    ]
}

/// Whether a VM's tap is still plugged into `bridge`.
pub fn has_taps(bridge: &str) -> bool {
    let Ok(ports) = std::fs::read_dir(std::path::Path::new("/sys/class/net").join(bridge).join("brif"))
    else {
        return false;
    };
    ports.flatten().any(|p| p.file_name().to_string_lossy().starts_with(crate::driver::TAP_PREFIX))
}

/// Remove every iptables rule tagged for `bridge` (NAT and isolation rules), found in
/// `iptables-save`, so nothing about the network need be known any more.
fn remove_tagged_rules(bridge: &str) {
    let tag = format!("\"drover {bridge}\"");
    for table in ["nat", "filter"] {
        let Ok(out) = Command::new("iptables-save").args(["-t", table]).output() else { return };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(rule) = line.strip_prefix("-A ") else { continue };
            if !rule.contains(&tag) {
                continue;
            }
            // iptables-save quotes the comment; the rule's words otherwise split on spaces.
            let mut words: Vec<String> = Vec::new();
            let mut quoted: Option<String> = None;
            for w in rule.split(' ') {
                match quoted.as_mut() {
                    Some(q) => {
                        q.push(' ');
                        q.push_str(w.trim_end_matches('"'));
                        if w.ends_with('"') {
                            words.push(quoted.take().unwrap_or_default());
                        }
                    }
                    None if w.starts_with('"') && !(w.len() > 1 && w.ends_with('"')) => {
                        quoted = Some(w.trim_start_matches('"').to_owned())
                    }
                    None => words.push(w.trim_matches('"').to_owned()),
                }
            }
            let Some((chain, rest)) = words.split_first() else { continue };
            if let Err(e) = iptables(table, "-D", chain, rest) {
                tracing::warn!(bridge, error = %e, "cannot remove a network's rule");
            }
        }
    }
}

/// Take a NAT or isolated network's plumbing off this host: its iptables rules, its
/// overlay and its bridge (taps still in the bridge go with it).
pub fn remove_network(bridge: &str) {
    remove_tagged_rules(bridge);
    for link in [crate::driver::overlay_of(bridge), bridge.to_owned()] {
        if exists(&link) {
            if let Err(e) = ip(&["link", "del", &link]) {
                tracing::warn!(link, error = %e, "cannot remove a network's link");
            }
        }
    }
}

/// The UDP port of the hosts' VXLAN overlays (IANA's).
pub const VXLAN_PORT: u16 = 4789;
/// The largest frame an overlay carries: 1500 less VXLAN's 50 bytes of headers.
pub const OVERLAY_MTU: u32 = 1450;

/// The overlay of `bridge`'s network: a VXLAN device `vni` on `local` in the bridge,
/// sending broadcast and unknown frames to every host in `peers` (and to nobody else;
/// it learns where each guest's MAC lives from what arrives).
pub fn overlay(
    bridge: &str,
    vni: u32,
    local: std::net::Ipv4Addr,
    peers: &[std::net::Ipv4Addr],
) -> Result<(), String> {
    let name = crate::driver::overlay_of(bridge);
    if !exists(&name) {
        let (vni, local, port) = (vni.to_string(), local.to_string(), VXLAN_PORT.to_string());
        let mtu = OVERLAY_MTU.to_string();
        ip(&[
            "link", "add", &name, "mtu", &mtu, "type", "vxlan", "id", &vni, "local", &local, "dstport", &port,
        ])?;
        ip(&["link", "set", &name, "master", bridge])?;
    }
    ip(&["link", "set", &name, "up"])?;
    let out = Command::new("bridge")
        .args(["fdb", "show", "dev", &name])
        .output()
        .map_err(|e| format!("cannot run bridge: {e}"))?;
    let listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("00:00:00:00:00:00 "))
        .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "dst").nth(1).map(str::to_owned))
        .collect();
    let fdb = |op: &str, dst: &str| {
        let out = Command::new("bridge")
            .args(["fdb", op, "00:00:00:00:00:00", "dev", &name, "dst", dst])
            .output()
            .map_err(|e| format!("cannot run bridge: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        Err(format!("bridge fdb {op} {dst} on {name}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    };
    for peer in peers.iter().map(|p| p.to_string()).filter(|p| !listed.contains(p)) {
        fdb("append", &peer)?;
    }
    for gone in listed.iter().filter(|l| !peers.iter().any(|p| p.to_string() == **l)) {
        fdb("del", gone)?;
    }
    Ok(())
}

/// A fresh tap `name` in `bridge`, up (a stale one of the same name goes first).
pub fn create_tap(name: &str, bridge: &str) -> Result<(), String> {
    remove_tap(name);
    ip(&["tuntap", "add", "dev", name, "mode", "tap"])?;
    ip(&["link", "set", name, "master", bridge])?;
    ip(&["link", "set", name, "up"])
}

/// Remove tap `name` if it exists.
pub fn remove_tap(name: &str) {
    if exists(name) {
        if let Err(e) = ip(&["link", "del", name]) {
            tracing::warn!(tap = name, error = %e, "cannot remove a tap");
        }
    }
}

/// Create the bridge and the tap of every NIC of `spec` (taps left from an earlier run of
/// the domain go first). Both process drivers call it before their VM process starts.
pub fn plug_nics(spec: &VmSpec) -> Result<(), String> {
    if spec.nics.len() > NICS_MAX {
        return Err(format!("{} NICs; at most {NICS_MAX} per VM", spec.nics.len()));
    }
    unplug_nics(&spec.domain);
    for (i, nic) in spec.nics.iter().enumerate() {
        let bridge = bridge_for(&nic.attachment).map_err(|e| format!("NIC {i} ({}): {e}", nic.network))?;
        create_tap(&tap_name(&spec.domain, i), &bridge).map_err(|e| format!("NIC {i}: {e}"))?;
    }
    Ok(())
}

/// Remove every tap `domain`'s VM may have had.
pub fn unplug_nics(domain: &str) {
    for i in 0..NICS_MAX {
        remove_tap(&tap_name(domain, i));
    }
}
