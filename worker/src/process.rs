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

/// Makes a normal exit (`std::process::exit`, as a test harness ends) leave through `_exit`
/// with the same status, before the exit-time destructors registered so far run: for test
/// binaries that load MLX and cannot end through [`exit_now`] (a fresh-clone run once died in
/// `malloc_consolidate` inside MLX's destructors after every engine test had passed). Call it
/// after loading a model, so that MLX's lazily built singletons are registered first: glibc
/// runs exit handlers last registered first. Only on Linux with glibc (`on_exit`); elsewhere
/// it does nothing.
pub fn skip_exit_destructors() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            // glibc's: like atexit, with the exit status passed to the handler.
            fn on_exit(
                handler: extern "C" fn(libc::c_int, *mut libc::c_void),
                arg: *mut libc::c_void,
            ) -> libc::c_int;
        }
        extern "C" fn leave(status: libc::c_int, _: *mut libc::c_void) {
            exit_now(status)
        }
        // SAFETY: registers a handler with no state; glibc copies the pointers.
        unsafe {
            on_exit(leave, std::ptr::null_mut());
        }
    }
}
