//! A `/dev/iommu` client written against cloud-hypervisor's `iommufd-ioctls` crate, as any
//! unmodified program would be: it allocates an IOAS, maps a buffer, unmaps it and destroys
//! the IOAS, checking each answer. Run it with the preload library:
//!
//! ```text
//! cargo build -p uiommu-preload --examples && cargo build -p uiommu
//! target/debug/uiommu run -- target/debug/examples/ioas_client
//! ```
//!
//! It prints one line per step and exits 0 only if every step behaved as the kernel's iommufd
//! documents.

use std::process::ExitCode;
use std::sync::Arc;

use iommufd_bindings::iommufd::{
    iommu_ioas_alloc, iommu_ioas_map, iommu_ioas_unmap,
    iommufd_ioas_map_flags_IOMMU_IOAS_MAP_FIXED_IOVA,
    iommufd_ioas_map_flags_IOMMU_IOAS_MAP_READABLE,
    iommufd_ioas_map_flags_IOMMU_IOAS_MAP_WRITEABLE,
};
use iommufd_ioctls::IommuFd;

const PAGE: usize = 4096;
const LENGTH: usize = 16 * PAGE;
const IOVA: u64 = 1 << 24;

fn run() -> Result<(), String> {
    let iommufd = Arc::new(IommuFd::new().map_err(|e| format!("open /dev/iommu: {e}"))?);
    println!("opened /dev/iommu");

    let mut alloc = iommu_ioas_alloc {
        size: std::mem::size_of::<iommu_ioas_alloc>() as u32,
        ..Default::default()
    };
    iommufd
        .alloc_iommu_ioas(&mut alloc)
        .map_err(|e| format!("IOMMU_IOAS_ALLOC: {e}"))?;
    let ioas = alloc.out_ioas_id;
    if ioas == 0 {
        return Err("IOMMU_IOAS_ALLOC returned id 0".into());
    }
    println!("allocated ioas {ioas}");

    // A page-aligned run inside a heap buffer: only its address travels to the ioctl.
    let buffer = vec![0x5au8; LENGTH + PAGE];
    let user_va = (buffer.as_ptr() as usize).next_multiple_of(PAGE) as u64;
    let map = iommu_ioas_map {
        size: std::mem::size_of::<iommu_ioas_map>() as u32,
        flags: iommufd_ioas_map_flags_IOMMU_IOAS_MAP_FIXED_IOVA
            | iommufd_ioas_map_flags_IOMMU_IOAS_MAP_READABLE
            | iommufd_ioas_map_flags_IOMMU_IOAS_MAP_WRITEABLE,
        ioas_id: ioas,
        user_va,
        length: LENGTH as u64,
        iova: IOVA,
        ..Default::default()
    };
    iommufd
        .map_iommu_ioas(&map)
        .map_err(|e| format!("IOMMU_IOAS_MAP: {e}"))?;
    println!("mapped {LENGTH:#x} bytes at iova {IOVA:#x}");

    let mut unmap = iommu_ioas_unmap {
        size: std::mem::size_of::<iommu_ioas_unmap>() as u32,
        ioas_id: ioas,
        iova: IOVA,
        length: LENGTH as u64,
    };
    iommufd
        .unmap_iommu_ioas(&mut unmap)
        .map_err(|e| format!("IOMMU_IOAS_UNMAP: {e}"))?;
    if unmap.length != LENGTH as u64 {
        return Err(format!(
            "IOMMU_IOAS_UNMAP unmapped {:#x} bytes",
            unmap.length
        ));
    }
    println!("unmapped {:#x} bytes", unmap.length);

    iommufd
        .destroy_iommu_object(ioas)
        .map_err(|e| format!("IOMMU_DESTROY: {e}"))?;
    println!("destroyed ioas {ioas}");
    if iommufd.destroy_iommu_object(ioas).is_ok() {
        return Err("a second IOMMU_DESTROY of the same id succeeded".into());
    }
    println!("second destroy refused");
    drop(buffer);
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("ioas_client: {message}");
            ExitCode::FAILURE
        }
    }
}
