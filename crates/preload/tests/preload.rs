//! The preload library, loaded into real programs: the `ioas_client` example (written against
//! cloud-hypervisor's `iommufd-ioctls`), the `fd_semantics` and `fault_poll` examples' checks,
//! and a C program built with glibc's fortify and LFS redirections.
//!
//! The library and the examples are found next to this test's executable
//! (`target/<profile>/`). A plain `cargo test -p uiommu-preload` builds them, but a filtered one
//! (`--test preload`) does not, so the first test to need them runs
//! `cargo build -p uiommu-preload --lib --examples` for this profile (a no-op when up to date).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// `target/<profile>`: the parent of the `deps` directory holding this test.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps")
        .to_path_buf()
}

/// Build the library and the examples once per test process.
fn build_artifacts() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let mut cargo = Command::new(env!("CARGO"));
        cargo
            .args(["build", "-p", "uiommu-preload", "--lib", "--examples"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir()
            .file_name()
            .is_some_and(|name| name == "release")
        {
            cargo.arg("--release");
        }
        let out = cargo.output().expect("run cargo");
        assert!(
            out.status.success(),
            "building uiommu-preload failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// The library built for this profile: the newest of the uplifted copy and the one in `deps`.
fn library() -> PathBuf {
    build_artifacts();
    let dir = profile_dir();
    [
        dir.join("libuiommu_preload.so"),
        dir.join("deps/libuiommu_preload.so"),
    ]
    .into_iter()
    .filter_map(|path| {
        let modified = path.metadata().ok()?.modified().ok()?;
        Some((modified, path))
    })
    .max()
    .map(|(_, path)| path)
    .expect("libuiommu_preload.so is built by cargo test")
}

fn example(name: &str) -> PathBuf {
    build_artifacts();
    let path = profile_dir().join("examples").join(name);
    assert!(path.exists(), "{} was built", path.display());
    path
}

/// A private scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("uiommu-preload-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// Run `program` with the library preloaded and the given extra environment.
fn run_preloaded(program: &Path, args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(program);
    command.args(args).env("LD_PRELOAD", library());
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("run the program")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Run one `fd_semantics` check; it prints `ok NAME` on success.
fn check(name: &str, env: &[(&str, &Path)]) {
    let out = run_preloaded(&example("fd_semantics"), &[name], env);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success() && stdout.lines().any(|l| l == format!("ok {name}")),
        "check {name}: {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        text(&out.stderr)
    );
}

/// Run one `fault_poll` check; it prints `ok NAME` on success.
fn fault_check(name: &str) {
    let out = run_preloaded(&example("fault_poll"), &[name], &[]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success() && stdout.lines().any(|l| l == format!("ok {name}")),
        "fault_poll {name}: {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        text(&out.stderr)
    );
}

#[test]
fn a_fault_fd_polls_readable_exactly_while_a_fault_is_queued() {
    fault_check("poll");
}

#[test]
fn a_fault_fd_selects_readable_exactly_while_a_fault_is_queued() {
    fault_check("select");
}

#[test]
fn a_fault_fd_works_with_level_and_edge_triggered_epoll() {
    fault_check("epoll");
}

#[test]
fn files_a_fork_child_s_ioctls_hand_out_are_the_child_s_descriptors() {
    fault_check("child-alloc");
}

#[test]
fn faults_make_a_fork_child_s_fault_fd_readable() {
    fault_check("fork");
}

#[test]
fn a_fork_child_s_fault_fd_stays_pollable_after_the_parent_closes_its_copy() {
    fault_check("fork-parent-closed");
}

#[test]
fn a_fault_fd_is_released_on_last_close_after_an_automatic_response() {
    fault_check("close");
}

#[test]
fn a_fault_fd_closed_while_readable_is_released() {
    fault_check("close-readable");
}

#[test]
fn ioas_client_allocates_maps_unmaps_and_destroys() {
    let out = run_preloaded(&example("ioas_client"), &[], &[]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let expected = [
        "opened /dev/iommu",
        "allocated ioas 1",
        "mapped 0x10000 bytes at iova 0x1000000",
        "unmapped 0x10000 bytes",
        "destroyed ioas 1",
        "second destroy refused",
    ];
    assert_eq!(stdout.lines().collect::<Vec<_>>(), expected);
    assert_eq!(
        text(&out.stderr),
        "",
        "the library writes nothing to stderr"
    );
}

#[test]
fn ioas_client_without_the_library_finds_no_device() {
    if Path::new("/dev/iommu").exists() {
        return; // A kernel iommufd would answer; nothing to show here.
    }
    let out = Command::new(example("ioas_client")).output().expect("run");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("open /dev/iommu"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn diagnostics_go_only_to_the_log_file() {
    let dir = scratch("log");
    let log = dir.join("preload.log");
    let out = run_preloaded(
        &example("ioas_client"),
        &[],
        &[("UIOMMU_PRELOAD_LOG", &log)],
    );
    assert!(out.status.success());
    assert_eq!(text(&out.stderr), "");
    let logged = std::fs::read_to_string(&log).expect("log written");
    assert!(logged.contains("open Iommu: file 1"), "{logged}");
    assert!(logged.contains("release file 1"), "{logged}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn dup_and_fcntl_duplicates_keep_the_context() {
    check("dup-keeps-context", &[]);
}

#[test]
fn close_on_exec_is_the_open_flag() {
    check("cloexec", &[]);
}

#[test]
fn last_close_releases_pins_synchronously() {
    check("last-close-releases", &[]);
}

#[test]
fn exit_of_the_last_holder_releases_before_waitpid_returns() {
    check("fork-child-exit-releases", &[]);
}

#[test]
fn unknown_ioctls_are_enotty() {
    check("unknown-ioctl", &[]);
}

#[test]
fn destroy_with_a_null_argument_is_efault() {
    check("destroy-null-efault", &[]);
}

#[test]
fn other_files_are_untouched() {
    check("other-files", &[]);
}

#[test]
fn a_fork_child_shares_the_context() {
    check("fork-shares-context", &[]);
}

#[test]
fn numbers_are_lowest_free_and_private_descriptors_stay_hidden() {
    check("numbers", &[]);
}

#[test]
fn access_fds_are_real_descriptors() {
    check("access-fd", &[]);
}

#[test]
fn a_fork_child_reads_ioctls_and_closes_handed_out_files_remotely() {
    check("fork-child-uses-handed-out-files", &[]);
}

#[test]
fn the_vfio_container_node_is_an_iommufd() {
    check("vfio-container", &[]);
}

#[test]
fn wild_pointers_are_efault_not_crashes() {
    check("wild-pointers", &[]);
}

#[test]
fn fail_nth_files_drive_the_engine_countdown() {
    let dir = scratch("failnth");
    check(
        "fail-nth",
        &[
            ("UIOMMU_FAULT_INJECTION", Path::new("1")),
            ("UIOMMU_DEBUGFS_DIR", &dir),
        ],
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_fork_child_s_countdown_travels_with_its_requests() {
    let dir = scratch("failnth-child");
    check(
        "fail-nth-in-child",
        &[
            ("UIOMMU_FAULT_INJECTION", Path::new("1")),
            ("UIOMMU_DEBUGFS_DIR", &dir),
        ],
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_failed_file_ioctl_of_a_fork_child_leaves_no_descriptor_in_it() {
    let dir = scratch("failnth-child-files");
    check(
        "fail-nth-child-files",
        &[
            ("UIOMMU_FAULT_INJECTION", Path::new("1")),
            ("UIOMMU_DEBUGFS_DIR", &dir),
        ],
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn debugfs_is_redirected_to_a_private_directory() {
    let dir = scratch("debugfs");
    check(
        "debugfs-redirect",
        &[
            ("UIOMMU_FAULT_INJECTION", Path::new("1")),
            ("UIOMMU_DEBUGFS_DIR", &dir),
        ],
    );
    let knob = std::fs::read_to_string(dir.join("failslab/ignore-gfp-wait")).expect("knob");
    assert_eq!(knob, "N");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn fortified_and_lfs_symbols_are_served() {
    let dir = scratch("fortified");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/fortified.c");
    let binary = dir.join("fortified");
    let compiled = Command::new("cc")
        .args(["-O2", "-D_FORTIFY_SOURCE=2", "-D_FILE_OFFSET_BITS=64", "-o"])
        .arg(&binary)
        .arg(&source)
        .output()
        .expect("run cc (Rust links with it, so it is installed)");
    assert!(compiled.status.success(), "{}", text(&compiled.stderr));
    let out = run_preloaded(
        &binary,
        &[],
        &[
            ("UIOMMU_FAULT_INJECTION", Path::new("1")),
            ("UIOMMU_DEBUGFS_DIR", &dir),
        ],
    );
    assert_eq!(text(&out.stdout), "ok\n", "stderr: {}", text(&out.stderr));
    assert!(out.status.success());
    let _ = std::fs::remove_dir_all(dir);
}

/// Run one `isolation` check; it prints what it measured, then `ok NAME`. Returns stdout.
fn isolation_check(name: &str, env: &[(&str, &Path)]) -> (String, String) {
    let out = run_preloaded(&example("isolation"), &[name], env);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(
        out.status.success() && stdout.lines().any(|l| l == format!("ok {name}")),
        "isolation {name}: {:?}\nstdout: {stdout}\nstderr: {stderr}",
        out.status,
    );
    (stdout, stderr)
}

#[test]
fn forged_requests_and_a_child_that_changed_uid_get_nothing() {
    let (stdout, _) = isolation_check("forged-requests", &[]);
    assert!(
        stdout.contains("forged requests refused: 3 of 3"),
        "{stdout}"
    );
}

#[test]
fn a_grandchild_is_served_over_the_channel_its_parent_handed_the_home() {
    isolation_check("grandchild", &[]);
}

#[test]
fn a_silent_child_does_not_stall_another_child_and_loses_its_channel() {
    isolation_check("silent-peer", &[]);
}

#[test]
fn dup2_onto_a_number_in_use_is_atomic_for_ioctls() {
    let (stdout, _) = isolation_check("dup2-race", &[]);
    assert!(stdout.contains(" 0 ENOTTY"), "{stdout}");
}

#[test]
fn a_vfork_child_s_close_leaves_the_parent_s_descriptor_alone() {
    isolation_check("vfork-close", &[]);
}

#[test]
fn each_emulated_file_costs_one_descriptor() {
    isolation_check("fd-count", &[]);
}

#[test]
fn calls_through_syscall_are_served_and_unservable_ones_reported_once() {
    let (_, quiet) = isolation_check("through-syscall", &[]);
    assert_eq!(quiet, "", "no notice on stderr unless uiommu run asks");
    let (_, stderr) = isolation_check("through-syscall", &[("UIOMMU_NOTICES", Path::new("1"))]);
    assert_eq!(
        stderr.matches("is not served").count(),
        1,
        "one notice for two unservable calls: {stderr}"
    );
}

/// The UNIX socket inodes in process `pid`'s descriptor table.
fn socket_inodes(pid: &str) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|entry| {
                let link = std::fs::read_link(entry.ok()?.path()).ok()?;
                let link = link.to_str()?;
                Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
            })
            .collect()
        })
        .unwrap_or_default()
}

#[test]
fn unrelated_processes_of_any_uid_find_nothing_to_connect_to() {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let mut program = Command::new(example("isolation"))
        .arg("hold")
        .env("LD_PRELOAD", library())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the held program");
    let mut stdout = BufReader::new(program.stdout.take().expect("stdout"));
    let mut ready = String::new();
    stdout.read_line(&mut ready).expect("ready line");
    let pids: Vec<String> = ready.split_whitespace().skip(1).map(String::from).collect();
    assert_eq!(pids.len(), 2, "{ready}");
    let inodes: Vec<String> = pids.iter().flat_map(|pid| socket_inodes(pid)).collect();
    // The forked program holds its channel (one socket in each process) ...
    assert!(inodes.len() >= 2, "no channel found: {inodes:?}");
    // ... and none of its sockets has a name or listens: nothing another process could reach.
    let table = std::fs::read_to_string("/proc/net/unix").expect("/proc/net/unix");
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields
            .get(6)
            .is_some_and(|inode| inodes.iter().any(|i| i == inode))
        {
            let flags = u32::from_str_radix(fields[3], 16).expect("flags");
            assert_eq!(fields.get(7), None, "a named socket of the program: {line}");
            assert_eq!(
                flags & 0x10000,
                0,
                "a listening socket of the program: {line}"
            );
        }
    }
    // Unrelated processes, of the program's uid and of another, try every named one.
    for uid in [None, Some(65534)] {
        let mut attacker = Command::new(example("isolation"));
        attacker
            .arg("connect-any")
            .args(&inodes)
            .env("LD_PRELOAD", library());
        if let Some(uid) = uid {
            attacker.uid(uid).gid(uid);
        }
        let out = attacker.output().expect("run the attacker");
        let said = text(&out.stdout);
        assert!(
            out.status.success() && said.contains(" 0 connections"),
            "uid {uid:?}: {said}{}",
            text(&out.stderr)
        );
    }
    program
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"done\n")
        .expect("release the program");
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut stdout, &mut rest);
    assert!(program.wait().expect("wait").success(), "{rest}");
    assert!(rest.contains("ok hold"), "{rest}");
}
