//! What the preload library costs per call: one emulated ioctl round trip
//! (`IOMMU_IOAS_IOVA_RANGES` on an empty IOAS, through the interposed `ioctl`, the descriptor
//! table with its identity check, and the engine's dispatcher) against one real system call
//! (`getppid`), measured in the same process.
//!
//! The benchmark must run with the library preloaded, so it re-executes itself with
//! `LD_PRELOAD` pointing at the library cargo built for this profile (beside the `deps`
//! directory of this executable). Run: `cargo bench -p uiommu-preload`.
//!
//! # Safety
//! The benchmark calls libc directly with live local buffers of the sizes the calls state.
#![allow(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use criterion::Criterion;
use uiommu_iommufd::abi::{
    IommuIoasAlloc, IommuIoasIovaRanges, IommuIovaRange, IOMMU_IOAS_ALLOC, IOMMU_IOAS_IOVA_RANGES,
};

/// Set in the re-executed child, which runs the measurements.
const UNDER_PRELOAD: &str = "UIOMMU_BENCH_UNDER_PRELOAD";

/// The library for this profile: the newest of `target/<profile>/` and its `deps/`.
fn library() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent()?;
    let profile = deps.parent().unwrap_or(Path::new("."));
    [
        profile.join("libuiommu_preload.so"),
        deps.join("libuiommu_preload.so"),
    ]
    .into_iter()
    .filter_map(|path| Some((path.metadata().ok()?.modified().ok()?, path)))
    .max()
    .map(|(_, path)| path)
}

fn reexec_under_preload() -> ExitCode {
    let (Some(library), Ok(exe)) = (library(), std::env::current_exe()) else {
        eprintln!("ioctl_round_trip: libuiommu_preload.so not found next to the benchmark");
        return ExitCode::FAILURE;
    };
    let status = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("LD_PRELOAD", library)
        .env(UNDER_PRELOAD, "1")
        .status();
    match status {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}

fn ioctl<T>(fd: i32, cmd: u32, arg: &mut T) -> i32 {
    // SAFETY: `arg` is a live, writable struct whose `size` field states its length.
    unsafe { libc::ioctl(fd, cmd as libc::c_ulong, arg as *mut T) }
}

fn main() -> ExitCode {
    if std::env::var_os(UNDER_PRELOAD).is_none() {
        return reexec_under_preload();
    }
    // SAFETY: a live NUL-terminated path.
    let fd = unsafe { libc::open(c"/dev/iommu".as_ptr(), libc::O_RDWR) };
    assert!(
        fd >= 0,
        "/dev/iommu is not served: is the library preloaded?"
    );
    let mut alloc = IommuIoasAlloc {
        size: std::mem::size_of::<IommuIoasAlloc>() as u32,
        ..Default::default()
    };
    assert_eq!(ioctl(fd, IOMMU_IOAS_ALLOC, &mut alloc), 0, "IOAS_ALLOC");
    let mut ranges_out = [IommuIovaRange::default(); 4];
    let mut ranges = IommuIoasIovaRanges {
        size: std::mem::size_of::<IommuIoasIovaRanges>() as u32,
        ioas_id: alloc.out_ioas_id,
        num_iovas: ranges_out.len() as u32,
        allowed_iovas: ranges_out.as_mut_ptr() as u64,
        ..Default::default()
    };
    assert_eq!(
        ioctl(fd, IOMMU_IOAS_IOVA_RANGES, &mut ranges),
        0,
        "IOVA_RANGES"
    );
    assert_eq!(ranges.num_iovas, 1, "an empty IOAS has one allowed range");

    let mut criterion = Criterion::default().configure_from_args();
    let mut group = criterion.benchmark_group("round_trip");
    group.bench_function("emulated_ioctl_iova_ranges", |b| {
        b.iter(|| {
            ranges.num_iovas = ranges_out.len() as u32;
            ioctl(fd, IOMMU_IOAS_IOVA_RANGES, &mut ranges)
        })
    });
    group.bench_function("real_syscall_getppid", |b| {
        // SAFETY: no arguments.
        b.iter(|| unsafe { libc::getppid() })
    });
    group.finish();
    criterion.final_summary();
    ExitCode::SUCCESS
}
