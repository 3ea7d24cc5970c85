//! This process's memory, reached the way uiommu's iommufd reaches user memory
//! (`crates/iommufd/src/process_memory.rs`): with `process_vm_readv`/`process_vm_writev` on our
//! own pid, so the kernel validates every address and an unmapped byte is `EFAULT` or a short
//! transfer, never a signal.
//!
//! # Safety
//!
//! The unsafe code is the two system calls. Buffers that Rust owns are passed for exactly
//! their length and borrowed for the call. Host addresses that came out of an IOMMU domain are
//! passed only as numbers inside iovecs: the kernel checks them against our page tables (for
//! the "local" side of a copy as much as for the "remote" side, with `copy_from_user`), so no
//! such address is ever dereferenced by Rust code. Those addresses are user memory that a
//! program mapped for DMA; like a real device, the model writes it without Rust borrowing it.
#![allow(unsafe_code)]

/// Most iovecs per call (`IOV_MAX`).
const IOV_BATCH: usize = 1024;

/// A host address range: `(address, length)`.
pub(crate) type HostRange = (u64, u64);

/// Why a host transfer stopped: the byte offset into the transfer where it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HostFault {
    /// Bytes moved before the failure.
    pub(crate) done: u64,
}

fn iovec(addr: u64, len: u64) -> libc::iovec {
    libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: len as usize,
    }
}

/// Moves `len` bytes between a local and a remote iovec list with `call`, restarting after
/// short transfers.
fn transfer(
    local: &[HostRange],
    remote: &[HostRange],
    call: impl Fn(&[libc::iovec], &[libc::iovec]) -> isize,
) -> Result<(), HostFault> {
    let total: u64 = local.iter().map(|r| r.1).sum();
    let mut done = 0u64;
    while done < total {
        let l = window(local, done);
        let r = window(remote, done);
        let moved = call(&l, &r);
        // -1 (EFAULT, or ENOMEM under memory pressure) or no progress: stop there.
        if moved <= 0 {
            return Err(HostFault { done });
        }
        done += moved as u64;
    }
    Ok(())
}

/// Up to [`IOV_BATCH`] iovecs covering `ranges` from byte `skip` on.
fn window(ranges: &[HostRange], mut skip: u64) -> Vec<libc::iovec> {
    let mut out = Vec::new();
    for &(addr, len) in ranges {
        if skip >= len {
            skip -= len;
            continue;
        }
        out.push(iovec(addr + skip, len - skip));
        skip = 0;
        if out.len() == IOV_BATCH {
            break;
        }
    }
    out
}

/// Copy host memory at `src` into `buf`.
pub(crate) fn read(src: &[HostRange], buf: &mut [u8]) -> Result<(), HostFault> {
    let base = buf.as_mut_ptr() as u64;
    let len = buf.len() as u64;
    transfer(&[(base, len)], src, |local, remote| {
        // SAFETY: `local` lies inside `buf`, which is mutably borrowed for this call; `remote`
        // holds plain addresses that the kernel validates in our address space.
        unsafe {
            libc::process_vm_readv(
                libc::getpid(),
                local.as_ptr(),
                local.len() as libc::c_ulong,
                remote.as_ptr(),
                remote.len() as libc::c_ulong,
                0,
            )
        }
    })
}

/// Copy `data` to host memory at `dst`.
pub(crate) fn write(dst: &[HostRange], data: &[u8]) -> Result<(), HostFault> {
    let base = data.as_ptr() as u64;
    let len = data.len() as u64;
    transfer(&[(base, len)], dst, |local, remote| {
        // SAFETY: `local` lies inside `data`, borrowed for this call and only read by the
        // kernel; `remote` holds plain addresses that the kernel validates.
        unsafe {
            libc::process_vm_writev(
                libc::getpid(),
                local.as_ptr(),
                local.len() as libc::c_ulong,
                remote.as_ptr(),
                remote.len() as libc::c_ulong,
                0,
            )
        }
    })
}

/// Copy host memory at `src` to host memory at `dst` in one kernel copy; both lists cover the
/// same number of bytes.
pub(crate) fn copy(src: &[HostRange], dst: &[HostRange]) -> Result<(), HostFault> {
    transfer(src, dst, |local, remote| {
        // SAFETY: both iovec lists hold plain addresses; the kernel validates the local ones
        // with `copy_from_user` and the remote ones against our page tables, so nothing here
        // is dereferenced by Rust.
        unsafe {
            libc::process_vm_writev(
                libc::getpid(),
                local.as_ptr(),
                local.len() as libc::c_ulong,
                remote.as_ptr(),
                remote.len() as libc::c_ulong,
                0,
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_between_split_ranges_and_faults_on_unmapped_addresses() {
        let src: Vec<u8> = (0..64u8).collect();
        let mut dst = vec![0u8; 64];
        let s = src.as_ptr() as u64;
        let d = dst.as_mut_ptr() as u64;
        copy(&[(s, 10), (s + 10, 54)], &[(d, 33), (d + 33, 31)]).unwrap();
        assert_eq!(dst, src);
        let mut buf = [0u8; 8];
        read(&[(s + 8, 8)], &mut buf).unwrap();
        assert_eq!(buf, [8, 9, 10, 11, 12, 13, 14, 15]);
        // Page 0 is never mapped.
        assert_eq!(read(&[(8, 8)], &mut buf), Err(HostFault { done: 0 }));
        assert_eq!(write(&[(8, 8)], &buf), Err(HostFault { done: 0 }));
    }
}
