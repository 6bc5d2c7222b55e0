use serde::{Deserialize, Serialize};

/// An amount of compute: what a host offers or a domain needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub vcpus: u32,
    pub memory_mib: u64,
}

impl Resources {
    pub const ZERO: Resources = Resources { vcpus: 0, memory_mib: 0 };

    /// Whether `self` fits inside `limit` in every dimension.
    pub fn fits_within(self, limit: Resources) -> bool {
        self.vcpus <= limit.vcpus && self.memory_mib <= limit.memory_mib
    }

    /// Sum; panics on overflow, which the limits make impossible.
    pub fn plus(self, other: Resources) -> Resources {
        Resources {
            vcpus: self.vcpus.checked_add(other.vcpus).expect("vcpu sum overflows"),
            memory_mib: self.memory_mib.checked_add(other.memory_mib).expect("memory sum overflows"),
        }
    }

    /// Difference; panics if `other` is larger, which would mean broken bookkeeping.
    pub fn minus(self, other: Resources) -> Resources {
        Resources {
            vcpus: self.vcpus.checked_sub(other.vcpus).expect("vcpu accounting underflows"),
            memory_mib: self.memory_mib.checked_sub(other.memory_mib).expect("memory accounting underflows"),
        }
    }
}
