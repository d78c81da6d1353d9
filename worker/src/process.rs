//! Ending a process that has MLX loaded.

use std::io::Write;

/// Flushes stdout and stderr and ends the process with `_exit`, skipping atexit handlers and
/// C++ static destructors. Those can hang: OpenBLAS 0.3.21 (Debian's) sometimes deadlocks
/// joining its threads at exit, and MLX's destructors may run while another thread is still
/// inside MLX. Every binary that loads MLX leaves through here.
pub fn exit_now(code: i32) -> ! {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: `_exit` has no preconditions and never returns.
    unsafe { libc::_exit(code) }
}
