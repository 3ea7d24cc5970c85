//! `uiommu run [--] PROGRAM [ARGS...]`: run an unmodified program with uiommu's `/dev/iommu`.
//!
//! The program runs with the preload library (`libuiommu_preload.so`, crate `uiommu-preload`)
//! in `LD_PRELOAD`, so its `open("/dev/iommu")` and the ioctls on that descriptor are served
//! by uiommu's iommufd over a mock IOMMU. Fail-nth emulation is on unless
//! `--no-fault-injection` is given: `/proc/.../fail-nth` files drive uiommu's fault injection
//! and `/sys/kernel/debug` is redirected to a private directory that is removed afterwards.
//! `uiommu run` exits with the program's status (128 + N when a signal N ended it).
//!
//! What the library cannot reach is said once, on stderr and in `--log`: a statically linked
//! PROGRAM (no ELF interpreter, so the dynamic loader never reads `LD_PRELOAD`) is reported
//! before it runs, and the library itself reports the first call on an emulated descriptor
//! that it cannot serve (it writes to stderr only under `uiommu run`, see `ENV_NOTICES`).
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
/// Lets the library write its one-line notices to stderr.
const ENV_NOTICES: &str = "UIOMMU_NOTICES";

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
    if let Some(path) = resolve_program(Path::new(program)) {
        if is_static_elf(&path) {
            notify(
                args.log.as_deref(),
                &format!(
                    "{} is statically linked: LD_PRELOAD cannot reach it, so uiommu does not \
                     serve its /dev/iommu (the kernel's, if any, answers it)",
                    path.display()
                ),
            );
        }
    }
    let mut command = Command::new(program);
    command
        .args(program_args)
        .env("LD_PRELOAD", preload)
        .env(ENV_NOTICES, "1");
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

/// Say `message` once: on stderr and, when there is one, in the log file.
fn notify(log: Option<&Path>, message: &str) {
    eprintln!("uiommu: {message}");
    if let Some(log) = log {
        use std::io::Write;
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .and_then(|mut file| writeln!(file, "uiommu: {message}"));
        if let Err(err) = appended {
            eprintln!("uiommu: cannot write {}: {err}", log.display());
        }
    }
}

/// The file `Command` will execute for `program`: the path itself when it names a directory
/// component, else the first executable match in `$PATH`.
fn resolve_program(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 || program.is_absolute() {
        return Some(program.to_path_buf());
    }
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| {
            path.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Whether `path` is an ELF executable without a program interpreter (`PT_INTERP`): statically
/// linked, or static-pie. Anything unreadable or not ELF (a script) is not judged static.
fn is_static_elf(path: &Path) -> bool {
    use std::io::Read;
    let mut head = Vec::new();
    let read = std::fs::File::open(path).and_then(|file| file.take(1 << 20).read_to_end(&mut head));
    read.is_ok() && elf_interpreter(&head) == Some(false)
}

/// `Some(true)` when the ELF image starting `bytes` has a `PT_INTERP` program header,
/// `Some(false)` when its program headers (all within `bytes`) have none, `None` when
/// `bytes` is not an ELF header with a readable program header table.
fn elf_interpreter(bytes: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if bytes.get(..4)? != b"\x7fELF" {
        return None;
    }
    let wide = match bytes.get(4)? {
        1 => false,
        2 => true,
        _ => return None,
    };
    let little = match bytes.get(5)? {
        1 => true,
        2 => false,
        _ => return None,
    };
    let uint = |at: usize, len: usize| -> Option<u64> {
        let field = bytes.get(at..at.checked_add(len)?)?;
        let mut value = 0u64;
        for i in 0..len {
            let byte = if little { field[len - 1 - i] } else { field[i] };
            value = value << 8 | u64::from(byte);
        }
        Some(value)
    };
    let (phoff, phentsize, phnum) = if wide {
        (uint(0x20, 8)?, uint(0x36, 2)?, uint(0x38, 2)?)
    } else {
        (uint(0x1c, 4)?, uint(0x2a, 2)?, uint(0x2c, 2)?)
    };
    if phentsize < 4 {
        return None;
    }
    let mut found = false;
    for index in 0..phnum {
        let at = usize::try_from(phoff.checked_add(index.checked_mul(phentsize)?)?).ok()?;
        found |= uint(at, 4)? == u64::from(PT_INTERP);
    }
    Some(found)
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

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    /// An ELF header (64- or 32-bit, either byte order) followed by program headers of
    /// `types`.
    fn elf(wide: bool, little: bool, types: &[u32]) -> Vec<u8> {
        let put = |image: &mut Vec<u8>, at: usize, value: u64, len: usize| {
            for i in 0..len {
                let byte = (value >> (8 * i)) as u8;
                image[if little { at + i } else { at + len - 1 - i }] = byte;
            }
        };
        let (header, entry) = if wide { (64, 56) } else { (52, 32) };
        let mut image = vec![0u8; header];
        image[..4].copy_from_slice(b"\x7fELF");
        image[4] = if wide { 2 } else { 1 };
        image[5] = if little { 1 } else { 2 };
        let (phoff, phentsize, phnum) = if wide {
            (0x20, 0x36, 0x38)
        } else {
            (0x1c, 0x2a, 0x2c)
        };
        put(&mut image, phoff, header as u64, if wide { 8 } else { 4 });
        put(&mut image, phentsize, entry as u64, 2);
        put(&mut image, phnum, types.len() as u64, 2);
        for &kind in types {
            let at = image.len();
            image.extend(vec![0u8; entry]);
            put(&mut image, at, kind.into(), 4);
        }
        image
    }

    fn elf64(types: &[u32]) -> Vec<u8> {
        elf(true, true, types)
    }

    proptest! {
        #[test]
        fn the_interpreter_is_found_in_any_layout(
            wide: bool,
            little: bool,
            types in proptest::collection::vec(prop_oneof![0u32..8, any::<u32>()], 0..12),
        ) {
            let image = elf(wide, little, &types);
            prop_assert_eq!(elf_interpreter(&image), Some(types.contains(&3)));
            // Cut short inside the last header's type: not judged.
            if !types.is_empty() {
                let entry = if wide { 56 } else { 32 };
                prop_assert_eq!(elf_interpreter(&image[..image.len() - entry + 3]), None);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut elfish = b"\x7fELF".to_vec();
            elfish.extend(&bytes);
            let _ = elf_interpreter(&bytes);
            let _ = elf_interpreter(&elfish);
        }
    }

    #[test]
    fn an_interpreter_header_marks_a_dynamic_program() {
        assert_eq!(elf_interpreter(&elf64(&[6, 3, 1])), Some(true));
        assert_eq!(elf_interpreter(&elf64(&[1, 1, 2])), Some(false));
        assert_eq!(elf_interpreter(&elf64(&[])), Some(false));
    }

    #[test]
    fn scripts_and_truncated_images_are_not_judged() {
        assert_eq!(elf_interpreter(b"#!/bin/sh\n"), None);
        let image = elf64(&[1, 3]);
        assert_eq!(elf_interpreter(&image[..image.len() - 60]), None);
        assert_eq!(elf_interpreter(&image[..10]), None);
    }

    #[test]
    fn this_test_binary_is_dynamic() {
        let exe = std::env::current_exe().expect("test executable");
        let bytes = std::fs::read(exe).expect("read it");
        assert_eq!(elf_interpreter(&bytes), Some(true));
    }
}
