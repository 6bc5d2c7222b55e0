use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// An IPv4 network: a network address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("expected a.b.c.d/len")]
    Syntax,
    #[error("prefix length {0} is over 32")]
    PrefixLen(u8),
    #[error("host bits are set; the network address is {0}")]
    HostBits(Ipv4Addr),
}

impl Cidr {
    /// A CIDR whose host bits are zero.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Result<Cidr, CidrError> {
        if prefix_len > 32 {
            return Err(CidrError::PrefixLen(prefix_len));
        }
        let cidr = Cidr { addr, prefix_len };
        if cidr.network() != addr {
            return Err(CidrError::HostBits(cidr.network()));
        }
        Ok(cidr)
    }

    fn mask(self) -> u32 {
        if self.prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix_len))
        }
    }

    pub fn network(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    pub fn broadcast(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }

    /// Whether `ip` is usable by an interface: inside, and neither network nor broadcast.
    pub fn is_host_address(self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && ip != self.network() && ip != self.broadcast()
    }

    /// The first usable address (the default gateway).
    pub fn first_host(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()) + 1)
    }

    pub fn overlaps(self, other: Cidr) -> bool {
        self.contains(other.network()) || other.contains(self.network())
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl std::str::FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let (addr, len) = s.split_once('/').ok_or(CidrError::Syntax)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| CidrError::Syntax)?;
        let len: u8 = len.parse().map_err(|_| CidrError::Syntax)?;
        Cidr::new(addr, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic() {
        let c: Cidr = "10.1.0.0/24".parse().unwrap();
        assert_eq!(c.broadcast(), Ipv4Addr::new(10, 1, 0, 255));
        assert_eq!(c.first_host(), Ipv4Addr::new(10, 1, 0, 1));
        assert!(c.is_host_address(Ipv4Addr::new(10, 1, 0, 254)));
        assert!(!c.is_host_address(Ipv4Addr::new(10, 1, 0, 255)));
        assert!(!c.is_host_address(Ipv4Addr::new(10, 1, 0, 0)));
        assert!(!c.contains(Ipv4Addr::new(10, 1, 1, 1)));
        assert!(c.overlaps("10.0.0.0/8".parse().unwrap()));
        assert!(!c.overlaps("10.1.1.0/24".parse().unwrap()));
        assert_eq!("10.1.0.1/24".parse::<Cidr>(), Err(CidrError::HostBits(Ipv4Addr::new(10, 1, 0, 0))));
        assert_eq!("10.1.0.0/33".parse::<Cidr>(), Err(CidrError::PrefixLen(33)));
        assert_eq!("10.1.0.0".parse::<Cidr>(), Err(CidrError::Syntax));
    }
}
