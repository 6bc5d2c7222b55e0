//! Loading a kernel into guest memory and writing what its boot protocol expects.
//!
//! Three image kinds, tried in this order:
//! - an ELF with a PVH entry note (Xen ELF note 18): entered in 32-bit protected mode
//!   with `%ebx` pointing at `hvm_start_info` (the test guest, Linux with CONFIG_PVH);
//! - an ELF without it (a Linux `vmlinux`): the 64-bit Linux boot protocol at its entry;
//! - a `bzImage`: the 64-bit Linux boot protocol at `load address + 0x200`.
//!
//! For the Linux protocol the VMM writes the zero page (setup header, e820 map, command
//! line and initrd pointers) and identity page tables for the first GiB, and enters in
//! long mode with `%rsi` pointing at the zero page.

use std::fs::File;
use std::path::Path;

use crate::memory::GuestMemoryMmap;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{BzImage, Cmdline, KernelLoader};
use vm_memory::{Address, ByteValued, Bytes, GuestAddress};

use crate::layout;

const PVH_MAGIC: u32 = 0x336e_c578;
const E820_RAM: u32 = 1;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
/// Linux's default cap on the initrd's end, when its header does not say.
const INITRD_ADDR_MAX_DEFAULT: u64 = 0x37ff_ffff;

/// How the vCPU enters the loaded kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootEntry {
    /// 32-bit protected mode, paging off, `%ebx` = `hvm_start_info`.
    Pvh { entry: GuestAddress, start_info: GuestAddress },
    /// 64-bit long mode on identity page tables, `%rsi` = zero page.
    Linux64 { entry: GuestAddress, zero_page: GuestAddress },
}

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("kernel {path}: {source}")]
    Open { path: String, source: std::io::Error },
    #[error("kernel {0} is neither an ELF nor a bzImage")]
    UnknownImage(String),
    #[error("kernel {path} is corrupt: {detail}")]
    Corrupt { path: String, detail: String },
    #[error("initrd {path}: {detail}")]
    Initrd { path: String, detail: String },
    #[error("command line: {0}")]
    Cmdline(String),
    #[error("writing boot data into guest memory: {0}")]
    Memory(String),
}

/// The zero page, as plain bytes.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ZeroPage(boot_params);

// SAFETY: `boot_params` is a `repr(C, packed)` struct of integers and arrays of integers
// (bindgen output): it has no padding, no pointers, and every bit pattern is valid.
unsafe impl ByteValued for ZeroPage {}

/// Load `kernel` (and `initrd`) into `mem`, write the boot data for `cmdline`, and say
/// where the vCPU starts.
pub fn load(
    mem: &GuestMemoryMmap,
    memory_bytes: u64,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
) -> Result<BootEntry, BootError> {
    let path = kernel.display().to_string();
    let mut file = File::open(kernel).map_err(|source| BootError::Open { path: path.clone(), source })?;
    let mut magic = [0u8; 4];
    std::io::Read::read_exact(&mut file, &mut magic).map_err(|_| BootError::UnknownImage(path.clone()))?;
    let corrupt =
        |e: linux_loader::loader::Error| BootError::Corrupt { path: path.clone(), detail: e.to_string() };
    let (result, elf) = if magic == *b"\x7fELF" {
        (Elf::load(mem, None, &mut file, Some(layout::HIMEM_START)).map_err(corrupt)?, true)
    } else {
        match BzImage::load(mem, None, &mut file, Some(layout::HIMEM_START)) {
            Ok(r) => (r, false),
            Err(linux_loader::loader::Error::Bzimage(
                linux_loader::loader::bzimage::Error::InvalidBzImage,
            )) => return Err(BootError::UnknownImage(path)),
            Err(e) => return Err(corrupt(e)),
        }
    };

    let mut line =
        Cmdline::new(crate::config::CMDLINE_BYTES_MAX + 1).map_err(|e| BootError::Cmdline(e.to_string()))?;
    if !cmdline.trim().is_empty() {
        line.insert_str(cmdline).map_err(|e| BootError::Cmdline(e.to_string()))?;
    }
    linux_loader::loader::load_cmdline(mem, layout::CMDLINE, &line)
        .map_err(|e| BootError::Memory(e.to_string()))?;
    let cmdline_bytes =
        line.as_cstring().map_err(|e| BootError::Cmdline(e.to_string()))?.as_bytes_with_nul().len();

    let initrd = match initrd {
        Some(p) => Some(load_initrd(mem, memory_bytes, p, result.kernel_end, result.setup_header.as_ref())?),
        None => None,
    };

    match (elf, result.pvh_boot_cap) {
        (true, PvhBootCapability::PvhEntryPresent(entry)) => {
            write_pvh(mem, memory_bytes, initrd)?;
            Ok(BootEntry::Pvh { entry, start_info: layout::PVH_START_INFO })
        }
        (true, _) => {
            write_zero_page(mem, memory_bytes, None, cmdline_bytes, initrd)?;
            write_page_tables(mem)?;
            Ok(BootEntry::Linux64 { entry: result.kernel_load, zero_page: layout::ZERO_PAGE })
        }
        (false, _) => {
            write_zero_page(mem, memory_bytes, result.setup_header, cmdline_bytes, initrd)?;
            write_page_tables(mem)?;
            let entry = result.kernel_load.checked_add(0x200).ok_or_else(|| BootError::Corrupt {
                path: kernel.display().to_string(),
                detail: "load address overflows".into(),
            })?;
            Ok(BootEntry::Linux64 { entry, zero_page: layout::ZERO_PAGE })
        }
    }
}

/// Put the initrd as high as the kernel allows, page aligned; returns (address, size).
fn load_initrd(
    mem: &GuestMemoryMmap,
    memory_bytes: u64,
    path: &Path,
    kernel_end: u64,
    header: Option<&setup_header>,
) -> Result<(GuestAddress, u64), BootError> {
    let err = |detail: String| BootError::Initrd { path: path.display().to_string(), detail };
    let data = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let size = data.len() as u64;
    let limit = header
        .map(|h| h.initrd_addr_max as u64)
        .filter(|&m| m != 0)
        .unwrap_or(INITRD_ADDR_MAX_DEFAULT)
        .min(memory_bytes - 1);
    let top = (limit + 1).checked_sub(size).ok_or_else(|| err("larger than guest memory".into()))?;
    let addr = top & !0xfff;
    if addr < kernel_end {
        return Err(err(format!("{size} bytes do not fit above the kernel")));
    }
    mem.write_slice(&data, GuestAddress(addr)).map_err(|e| err(e.to_string()))?;
    Ok((GuestAddress(addr), size))
}

fn ram_ranges(memory_bytes: u64) -> [(u64, u64); 2] {
    [
        (0, layout::EBDA_START),
        (layout::HIMEM_START.raw_value(), memory_bytes - layout::HIMEM_START.raw_value()),
    ]
}

fn write_pvh(
    mem: &GuestMemoryMmap,
    memory_bytes: u64,
    initrd: Option<(GuestAddress, u64)>,
) -> Result<(), BootError> {
    let memmap: Vec<hvm_memmap_table_entry> = ram_ranges(memory_bytes)
        .iter()
        .map(|&(addr, size)| hvm_memmap_table_entry { addr, size, type_: E820_RAM, reserved: 0 })
        .collect();
    let modlist = layout::PVH_MEMMAP.unchecked_add(0x100);
    let start_info = hvm_start_info {
        magic: PVH_MAGIC,
        version: 1,
        cmdline_paddr: layout::CMDLINE.raw_value(),
        memmap_paddr: layout::PVH_MEMMAP.raw_value(),
        memmap_entries: memmap.len() as u32,
        nr_modules: u32::from(initrd.is_some()),
        modlist_paddr: if initrd.is_some() { modlist.raw_value() } else { 0 },
        ..Default::default()
    };
    let mut params = BootParams::new::<hvm_start_info>(&start_info, layout::PVH_START_INFO);
    params.set_sections::<hvm_memmap_table_entry>(&memmap, layout::PVH_MEMMAP);
    if let Some((addr, size)) = initrd {
        let module = hvm_modlist_entry { paddr: addr.raw_value(), size, ..Default::default() };
        params.set_modules::<hvm_modlist_entry>(&[module], modlist);
    }
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
        .map_err(|e| BootError::Memory(e.to_string()))
}

fn write_zero_page(
    mem: &GuestMemoryMmap,
    memory_bytes: u64,
    header: Option<setup_header>,
    cmdline_bytes: usize,
    initrd: Option<(GuestAddress, u64)>,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    if let Some(h) = header {
        params.hdr = h;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = layout::CMDLINE.raw_value() as u32;
    params.hdr.cmdline_size = cmdline_bytes as u32;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr.raw_value() as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    for (i, (addr, size)) in ram_ranges(memory_bytes).into_iter().enumerate() {
        params.e820_table[i] = boot_e820_entry { addr, size, r#type: E820_RAM };
    }
    params.e820_entries = 2;
    mem.write_obj(ZeroPage(params), layout::ZERO_PAGE).map_err(|e| BootError::Memory(e.to_string()))
}

/// Identity-map the first GiB with 2 MiB pages.
fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    let w = |v: u64, a: GuestAddress| mem.write_obj(v, a).map_err(|e| BootError::Memory(e.to_string()));
    w(layout::PDPT.raw_value() | 0x3, layout::PML4)?;
    w(layout::PD.raw_value() | 0x3, layout::PDPT)?;
    for i in 0..512u64 {
        w((i << 21) | 0x83, layout::PD.unchecked_add(i * 8))?;
    }
    Ok(())
}
