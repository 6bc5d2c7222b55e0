//! Guest memory: vm-memory's mmap backend with a dirty bitmap. Every write the VMM itself
//! makes to guest memory through vm-memory (virtio used rings, a block read's data, a
//! received frame, a reset's kernel load) sets the bit of its page, beside KVM's dirty
//! log of the guest's own writes; live migration ([`crate::migration`]) sends the pages
//! either marks. The bitmap costs one bit per 4 KiB page and an atomic OR per write.

pub use vm_memory::bitmap::AtomicBitmap;

/// The guest memory of every VM of this VMM.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<AtomicBitmap>;
/// One region of it.
pub type GuestRegionMmap = vm_memory::GuestRegionMmap<AtomicBitmap>;
