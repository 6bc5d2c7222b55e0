//! Host network plumbing for VM NICs: bridges and tap devices, made with iproute2
//! (`ip`), as libvirt does for its bridged networks. Names are at most 15 bytes
//! (`driver::isolated_bridge`, `driver::tap_name`).

use std::process::Command;

use crate::driver::{tap_name, Attachment, VmSpec};

/// Most NICs per VM.
pub const NICS_MAX: usize = 8;

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
            if !exists(b) {
                ip(&["link", "add", "name", b, "type", "bridge"])?;
            }
            ip(&["link", "set", b, "up"])?;
            Ok(b.clone())
        }
        Attachment::Unsupported(reason) => Err(reason.clone()),
    }
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
