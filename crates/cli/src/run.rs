//! `uiommu run [--] PROGRAM [ARGS...]`: run an unmodified program with uiommu's `/dev/iommu`.
//!
//! The program runs with the preload library (`libuiommu_preload.so`, crate `uiommu-preload`)
//! in `LD_PRELOAD`, so its `open("/dev/iommu")` and the ioctls on that descriptor are served
//! by uiommu's iommufd over a mock IOMMU. Fail-nth emulation is on unless
//! `--no-fault-injection` is given: `/proc/.../fail-nth` files drive uiommu's fault injection
//! and `/sys/kernel/debug` is redirected to a private directory that is removed afterwards.
//! `uiommu run` exits with the program's status (128 + N when a signal N ended it).
//!
//! The library is found at `$UIOMMU_PRELOAD`, else next to the `uiommu` executable (as cargo
//! builds both into `target/<profile>/`); a missing library is an error that says how to build
//! it. The variable names below must match those the library reads (`uiommu_preload::ENV_*`);
//! they are repeated here rather than linked, because linking the library's crate would
//! interpose `uiommu`'s own libc calls.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Overrides where the library is looked for.
pub const ENV_PRELOAD: &str = "UIOMMU_PRELOAD";
/// The library's file name.
pub const LIBRARY: &str = "libuiommu_preload.so";
const ENV_FAULT_INJECTION: &str = "UIOMMU_FAULT_INJECTION";
const ENV_DEBUGFS_DIR: &str = "UIOMMU_DEBUGFS_DIR";
const ENV_LOG: &str = "UIOMMU_PRELOAD_LOG";

/// Arguments of `uiommu run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Leave `/proc/.../fail-nth` and `/sys/kernel/debug` to the kernel.
    #[arg(long)]
    pub no_fault_injection: bool,
    /// Append the library's diagnostics to FILE (it never writes to stdout or stderr).
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// The program to run, and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<OsString>,
}

/// Where the preload library is: `$UIOMMU_PRELOAD`, else `libuiommu_preload.so` beside the
/// running executable (or in its `deps/` directory, where cargo leaves a library built as a
/// dependency; the newer of the two wins).
///
/// # Errors
/// A message naming where it looked and how to build the library.
pub fn find_library() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(ENV_PRELOAD) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("{ENV_PRELOAD}={} is not a file", path.display()))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate uiommu itself: {e}"))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    [dir.join(LIBRARY), dir.join("deps").join(LIBRARY)]
        .into_iter()
        .filter_map(|path| Some((path.metadata().ok()?.modified().ok()?, path)))
        .max()
        .map(|(_, path)| path)
        .ok_or_else(|| {
            format!(
                "cannot find {LIBRARY} next to {}: build it with `cargo build -p uiommu-preload` \
                 (with --release for a release uiommu), or set {ENV_PRELOAD} to its path",
                exe.display()
            )
        })
}

/// Run `uiommu run`.
pub fn run(args: RunArgs) -> ExitCode {
    match run_program(&args) {
        Ok(code) => ExitCode::from(code),
        Err(message) => {
            eprintln!("uiommu: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run_program(args: &RunArgs) -> Result<u8, String> {
    let library = find_library()?;
    let library = library
        .canonicalize()
        .map_err(|e| format!("{}: {e}", library.display()))?;
    let (program, program_args) = args.command.split_first().ok_or("no program to run")?;
    let mut preload = library.into_os_string();
    if let Some(existing) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        preload.push(":");
        preload.push(existing);
    }
    let mut command = Command::new(program);
    command.args(program_args).env("LD_PRELOAD", preload);
    if let Some(log) = &args.log {
        command.env(ENV_LOG, log);
    }
    let debugfs = if args.no_fault_injection {
        command
            .env_remove(ENV_FAULT_INJECTION)
            .env_remove(ENV_DEBUGFS_DIR);
        None
    } else {
        let dir = std::env::temp_dir().join(format!("uiommu-debugfs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        command
            .env(ENV_FAULT_INJECTION, "1")
            .env(ENV_DEBUGFS_DIR, &dir);
        Some(dir)
    };
    let status = command.status();
    if let Some(dir) = debugfs {
        let _ = std::fs::remove_dir_all(dir);
    }
    let status = status.map_err(|e| format!("cannot run {}: {e}", Path::new(program).display()))?;
    Ok(exit_code(status))
}

/// The shell's convention: the exit code, or 128 + the signal that ended the program.
fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => 128u8.wrapping_add(signal as u8),
        (None, None) => 1,
    }
}
