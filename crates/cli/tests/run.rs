//! `uiommu run`: programs get uiommu's `/dev/iommu` through the preload library.
//!
//! The library and the example programs belong to the `uiommu-preload` package, which
//! `cargo test -p uiommu` does not build; the first test that needs them runs
//! `cargo build -p uiommu-preload --lib --examples` for this test's profile (a no-op when they are
//! up to date), which puts the library next to the `uiommu` executable, as a user's build does.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn uiommu() -> Command {
    Command::new(env!("CARGO_BIN_EXE_uiommu"))
}

/// `target/<profile>`, where cargo put `uiommu`.
fn profile_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_uiommu"))
        .parent()
        .expect("uiommu lives in target/<profile>")
        .to_path_buf()
}

/// Build the preload library and its examples once per test process; returns the examples'
/// directory.
fn preload_examples() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
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
        profile_dir().join("examples")
    })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run(args: &[&str]) -> Output {
    preload_examples();
    uiommu()
        .arg("run")
        .args(args)
        .env_remove("UIOMMU_PRELOAD")
        .output()
        .expect("run uiommu")
}

#[test]
fn run_serves_the_iommufd_ioctls_client() {
    let client = preload_examples().join("ioas_client");
    let out = run(&["--", client.to_str().expect("utf-8 path")]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    for line in [
        "allocated ioas 1",
        "mapped 0x10000 bytes at iova 0x1000000",
        "unmapped 0x10000 bytes",
        "destroyed ioas 1",
        "second destroy refused",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "missing {line:?} in\n{stdout}"
        );
    }
}

#[test]
fn run_enables_fail_nth_emulation_by_default() {
    let checks = preload_examples().join("fd_semantics");
    let checks = checks.to_str().expect("utf-8 path");
    let out = run(&["--", checks, "fail-nth"]);
    assert_eq!(text(&out.stdout), "ok fail-nth\n", "{}", text(&out.stderr));
    let out = run(&["--", checks, "debugfs-redirect"]);
    assert_eq!(
        text(&out.stdout),
        "ok debugfs-redirect\n",
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn run_sets_the_environment_and_cleans_the_debugfs_directory() {
    let out = run(&[
        "sh",
        "-c",
        "echo \"$LD_PRELOAD\"; echo \"$UIOMMU_FAULT_INJECTION\"; echo \"$UIOMMU_DEBUGFS_DIR\"",
    ]);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(lines[0].ends_with("libuiommu_preload.so"), "{stdout}");
    assert!(Path::new(lines[0]).is_absolute());
    assert_eq!(lines[1], "1");
    assert!(
        !Path::new(lines[2]).exists(),
        "the debugfs stand-in outlived the run"
    );

    let out = run(&[
        "--no-fault-injection",
        "sh",
        "-c",
        "echo \"[$UIOMMU_FAULT_INJECTION]\"",
    ]);
    assert_eq!(text(&out.stdout), "[]\n");
}

#[test]
fn run_exits_with_the_programs_status() {
    let out = run(&["--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    let out = run(&["--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(out.status.code(), Some(128 + 15), "killed by SIGTERM");
}

#[test]
fn run_keeps_an_existing_ld_preload() {
    preload_examples();
    let out = uiommu()
        .args(["run", "sh", "-c", "echo \"$LD_PRELOAD\""])
        .env_remove("UIOMMU_PRELOAD")
        .env("LD_PRELOAD", "libc.so.6")
        .output()
        .expect("run uiommu");
    let stdout = text(&out.stdout);
    assert!(stdout.trim_end().ends_with(":libc.so.6"), "{stdout}");
}

#[test]
fn run_reports_a_missing_library_with_how_to_build_it() {
    let out = uiommu()
        .args(["run", "true"])
        .env("UIOMMU_PRELOAD", "/nonexistent/libuiommu_preload.so")
        .output()
        .expect("run uiommu");
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("/nonexistent/libuiommu_preload.so"));

    // A uiommu with no library beside it.
    let dir = std::env::temp_dir().join(format!("uiommu-run-alone-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let alone = dir.join("uiommu");
    std::fs::copy(env!("CARGO_BIN_EXE_uiommu"), &alone).expect("copy uiommu");
    let out = Command::new(&alone)
        .args(["run", "true"])
        .env_remove("UIOMMU_PRELOAD")
        .output()
        .expect("run the copy");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("cargo build -p uiommu-preload"), "{stderr}");
    assert!(stderr.contains("UIOMMU_PRELOAD"), "{stderr}");
}

#[test]
fn run_reports_a_program_that_cannot_start() {
    let out = run(&["/nonexistent/program"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("cannot run /nonexistent/program"));
}

#[test]
fn run_requires_a_program() {
    let out = uiommu().arg("run").output().expect("run uiommu");
    assert!(!out.status.success());
}

#[test]
fn run_says_once_that_a_static_program_cannot_be_served() {
    let dir = std::env::temp_dir().join(format!("uiommu-run-static-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let source = dir.join("opens.c");
    std::fs::write(
        &source,
        "#include <fcntl.h>\n#include <stdio.h>\n\
         int main(void) { printf(\"open %d\\n\", open(\"/dev/iommu\", O_RDWR) >= 0); return 0; }\n",
    )
    .expect("write the program");
    let mut binaries = Vec::new();
    for (name, flags) in [("static", &["-static"][..]), ("dynamic", &[][..])] {
        let binary = dir.join(name);
        let compiled = Command::new("cc")
            .args(flags)
            .arg("-o")
            .arg(&binary)
            .arg(&source)
            .output()
            .expect("run cc");
        assert!(compiled.status.success(), "{}", text(&compiled.stderr));
        binaries.push(binary);
    }
    let log = dir.join("run.log");
    let out = run(&[
        "--log",
        log.to_str().expect("utf-8 path"),
        "--",
        binaries[0].to_str().expect("utf-8 path"),
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(
        stderr.matches("statically linked").count(),
        1,
        "one warning on stderr: {stderr}"
    );
    assert!(stderr.contains("LD_PRELOAD cannot reach it"), "{stderr}");
    let logged = std::fs::read_to_string(&log).expect("the log");
    assert_eq!(logged.matches("statically linked").count(), 1, "{logged}");
    // The program still runs; the warning is why it found no /dev/iommu to serve it.
    assert!(out.status.success());

    // A dynamic program is served, without a warning.
    let out = run(&["--", binaries[1].to_str().expect("utf-8 path")]);
    assert_eq!(text(&out.stdout), "open 1\n");
    assert_eq!(text(&out.stderr), "");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn run_serves_ioctls_made_through_syscall() {
    let checks = preload_examples().join("isolation");
    let out = run(&[
        "--",
        checks.to_str().expect("utf-8 path"),
        "through-syscall",
    ]);
    assert_eq!(
        text(&out.stdout),
        "ok through-syscall\n",
        "{}",
        text(&out.stderr)
    );
    // What the library cannot serve (a positional readv of the device) is said once.
    assert_eq!(text(&out.stderr).matches("is not served").count(), 1);
}
