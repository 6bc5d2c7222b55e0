//! Network commands.

use super::Draft;
use crate::event::Event;
use crate::limits::{IFNAME_LEN_MAX, NETWORK_PREFIX_LEN_MAX, NETWORK_PREFIX_LEN_MIN};
use crate::model::{Cidr, NetworkConfig, NetworkMode, ResourceKey, ResourceKind, VNI_MAX};
use crate::rejection::Rejection;
use crate::validate;

pub(super) fn create(d: &mut Draft<'_>, name: &str, config: &NetworkConfig) -> Result<(), Rejection> {
    validate::name("name", name)?;
    d.absent(ResourceKey::Network(name.to_owned()), name)?;
    let mut config = config.clone();
    match (config.mode, &config.bridge) {
        (NetworkMode::Bridge, None) => {
            return Err(Rejection::invalid("config.bridge", "a bridge network names its host bridge"));
        }
        (NetworkMode::Bridge, Some(bridge)) => {
            let ok = !bridge.is_empty()
                && bridge.len() <= IFNAME_LEN_MAX
                && bridge.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
            if !ok {
                return Err(Rejection::invalid(
                    "config.bridge",
                    format!("{bridge:?} is not an interface name (1 to {IFNAME_LEN_MAX} of [A-Za-z0-9-._])"),
                ));
            }
        }
        (_, Some(_)) => {
            return Err(Rejection::invalid("config.bridge", "only bridge networks name a host bridge"));
        }
        (_, None) => {}
    }
    match config.cidr {
        None if config.mode != NetworkMode::Bridge => {
            return Err(Rejection::invalid("config.cidr", "isolated and nat networks need a CIDR"));
        }
        None if config.gateway.is_some() => {
            return Err(Rejection::invalid("config.gateway", "a gateway needs a CIDR"));
        }
        None => {}
        Some(cidr) => {
            validate::range(
                "config.cidr.prefix_len",
                cidr.prefix_len,
                NETWORK_PREFIX_LEN_MIN,
                NETWORK_PREFIX_LEN_MAX,
            )?;
            Cidr::new(cidr.addr, cidr.prefix_len)
                .map_err(|e| Rejection::invalid("config.cidr", e.to_string()))?;
            match config.gateway {
                Some(gw) if !cidr.is_host_address(gw) => {
                    return Err(Rejection::invalid(
                        "config.gateway",
                        format!("{gw} is not a host address of {cidr}"),
                    ));
                }
                Some(_) => {}
                None if config.mode != NetworkMode::Bridge => config.gateway = Some(cidr.first_host()),
                None => {}
            }
            for other in d.state.networks().values() {
                if let Some(theirs) = other.config.cidr.filter(|c| c.overlaps(cidr)) {
                    return Err(Rejection::precondition(
                        ResourceKind::Network,
                        name,
                        format!("{cidr} overlaps network {} ({theirs})", other.name),
                    ));
                }
            }
        }
    }
    // The lowest VNI no network holds (creations are decided one at a time on the leader,
    // as the range check above is).
    let taken: std::collections::BTreeSet<u32> = d.state.networks().values().map(|n| n.vni()).collect();
    let vni = (1..=VNI_MAX).find(|v| !taken.contains(v)).ok_or_else(|| {
        Rejection::exhausted(ResourceKind::Network, name, "every VXLAN network identifier is taken")
    })?;
    d.emit(Event::NetworkDefined { name: name.to_owned(), config, vni });
    Ok(())
}

pub(super) fn delete(d: &mut Draft<'_>, name: &str) -> Result<(), Rejection> {
    let network = d.network(name)?;
    if let Some(lease) = network.leases.values().next() {
        return Err(Rejection::precondition(
            ResourceKind::Network,
            name,
            format!("in use by {} NICs (domain {} among them)", network.leases.len(), lease.domain),
        ));
    }
    d.emit(Event::NetworkDeleted { name: name.to_owned() });
    Ok(())
}
