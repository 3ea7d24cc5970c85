//! What the example programs share: the result of one check, errno, and how a check reports.
//! The preload tests run each check in its own process and look for `ok NAME` on stdout.

use std::process::ExitCode;

/// A check passes, or says what went wrong.
pub type Check = Result<(), String>;

/// The calling thread's errno after a failed libc call.
pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// `Ok` when `condition` holds, else the message `what` builds.
pub fn ensure(condition: bool, what: impl FnOnce() -> String) -> Check {
    if condition {
        Ok(())
    } else {
        Err(what())
    }
}

/// Print the outcome of check `name` (`ok NAME` or `not ok NAME: why`) and turn it into the
/// process's exit status.
pub fn report(name: &str, result: Check) -> ExitCode {
    match result {
        Ok(()) => {
            println!("ok {name}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            println!("not ok {name}: {why}");
            ExitCode::FAILURE
        }
    }
}
