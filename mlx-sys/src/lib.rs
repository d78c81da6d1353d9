//! Raw bindings to mlx-c, built against an installed MLX prefix (see build.rs).
//!
//! This crate stands in for the published `mlx-sys` (same name, version and `links`), so
//! mlx-rs builds unchanged on Linux (CPU or CUDA MLX) as well as on macOS (Metal MLX).

#![allow(non_upper_case_globals)]
#![allow(non_camel_case_types)]
#![allow(non_snake_case)]
#![allow(clippy::all)]

/// IEEE half-precision value as raw bits. mlx-rs reads the bits as `.0`, the shape bindgen
/// gives `_Float16`; declaring it here keeps libclang's x86 `_Float16` support out of the build.
#[repr(transparent)]
#[derive(Debug, Default, Copy, Clone, PartialEq, Eq, Hash)]
pub struct float16_t(pub u16);

/// bfloat16 value as raw bits, the shape mlx-rs expects.
pub type bfloat16_t = u16;

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));

/// mlx-rs seeds its default random state from this macOS clock call. Elsewhere the symbol
/// does not exist, so provide it: any monotonic-enough nanosecond count serves as a seed.
#[cfg(not(target_os = "macos"))]
#[no_mangle]
pub extern "C" fn mach_approximate_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
