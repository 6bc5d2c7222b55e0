use serde::{Deserialize, Serialize};

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Mac(pub [u8; 6]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    #[error("expected six hex octets separated by ':'")]
    Syntax,
}

impl Mac {
    /// The locally administered prefix QEMU and libvirt use for generated addresses.
    pub const GENERATED_PREFIX: [u8; 3] = [0x52, 0x54, 0x00];

    /// Whether the address can belong to one interface (not multicast/broadcast, not zero).
    pub fn is_unicast(self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }
}

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

impl std::str::FromStr for Mac {
    type Err = MacError;

    fn from_str(s: &str) -> Result<Mac, MacError> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or(MacError::Syntax)?;
            if part.len() != 2 {
                return Err(MacError::Syntax);
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| MacError::Syntax)?;
        }
        if parts.next().is_some() {
            return Err(MacError::Syntax);
        }
        Ok(Mac(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let m: Mac = "52:54:00:ab:cd:EF".parse().unwrap();
        assert_eq!(m.to_string(), "52:54:00:ab:cd:ef");
        assert!(m.is_unicast());
        assert!(!"01:00:5e:00:00:01".parse::<Mac>().unwrap().is_unicast());
        for bad in ["", "52:54:00:ab:cd", "52:54:00:ab:cd:ef:00", "5:54:00:ab:cd:ef", "zz:54:00:ab:cd:ef"] {
            assert_eq!(bad.parse::<Mac>(), Err(MacError::Syntax), "{bad}");
        }
    }
}
