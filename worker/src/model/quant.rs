//! Quantized matmul, expert gather and dequantize in any of MLX's quantization modes. mlx-rs's
//! own wrappers are hard-wired to affine; these call mlx-c's mode-aware functions directly,
//! with owned arrays in and out, so no raw handle escapes this file.

use std::ffi::CStr;
use std::os::raw::c_int;

use mlx_rs::error::Exception;
use mlx_rs::{Array, Stream};
use opta_lmx_shared::model_dir::QuantMode;

fn mode_name(mode: QuantMode) -> &'static CStr {
    match mode {
        QuantMode::Affine => c"affine",
        QuantMode::Mxfp4 => c"mxfp4",
        QuantMode::Mxfp8 => c"mxfp8",
        QuantMode::Nvfp4 => c"nvfp4",
    }
}

fn some_int(value: i32) -> mlx_sys::mlx_optional_int {
    mlx_sys::mlx_optional_int {
        value,
        has_value: true,
    }
}

/// An optional array argument: the array's handle, or an empty one that is freed after.
struct Optional {
    handle: mlx_sys::mlx_array,
    owned: bool,
}

impl Optional {
    fn of(array: Option<&Array>) -> Self {
        match array {
            Some(a) => Optional {
                handle: a.as_ptr(),
                owned: false,
            },
            // SAFETY: a fresh empty array, freed in `drop`.
            None => Optional {
                handle: unsafe { mlx_sys::mlx_array_new() },
                owned: true,
            },
        }
    }
}

impl Drop for Optional {
    fn drop(&mut self) {
        if self.owned {
            // SAFETY: created by `mlx_array_new` above and not shared.
            unsafe { mlx_sys::mlx_array_free(self.handle) };
        }
    }
}

/// Runs one mlx-c op that writes its result into a fresh array.
fn call(
    op: &str,
    f: impl FnOnce(*mut mlx_sys::mlx_array, mlx_sys::mlx_stream) -> c_int,
) -> Result<Array, Exception> {
    let stream = Stream::thread_local_or_default();
    // SAFETY: a fresh empty array for the op to fill; on failure it is freed here, on success
    // its ownership moves into the returned `Array`.
    let mut res = unsafe { mlx_sys::mlx_array_new() };
    if f(&mut res, stream.as_ptr()) != 0 {
        unsafe { mlx_sys::mlx_array_free(res) };
        return Err(Exception::custom(format!("MLX {op} failed")));
    }
    Ok(unsafe { Array::from_ptr(res) })
}

/// `x @ dequantize(w).T` for weights quantized in `mode`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn quantized_matmul(
    x: &Array,
    w: &Array,
    scales: &Array,
    biases: Option<&Array>,
    transpose: bool,
    group_size: i32,
    bits: i32,
    mode: QuantMode,
) -> Result<Array, Exception> {
    let biases = Optional::of(biases);
    call("quantized_matmul", |res, s| unsafe {
        mlx_sys::mlx_quantized_matmul(
            res,
            x.as_ptr(),
            w.as_ptr(),
            scales.as_ptr(),
            biases.handle,
            transpose,
            some_int(group_size),
            some_int(bits),
            mode_name(mode).as_ptr(),
            s,
        )
    })
}

/// Each row of `x` through its expert `experts[...]` of stacked weights quantized in `mode`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gather_qmm(
    x: &Array,
    w: &Array,
    scales: &Array,
    biases: Option<&Array>,
    experts: &Array,
    group_size: i32,
    bits: i32,
    mode: QuantMode,
    sorted: bool,
) -> Result<Array, Exception> {
    let biases = Optional::of(biases);
    let lhs = Optional::of(None);
    call("gather_qmm", |res, s| unsafe {
        mlx_sys::mlx_gather_qmm(
            res,
            x.as_ptr(),
            w.as_ptr(),
            scales.as_ptr(),
            biases.handle,
            lhs.handle,
            experts.as_ptr(),
            true,
            some_int(group_size),
            some_int(bits),
            mode_name(mode).as_ptr(),
            sorted,
            s,
        )
    })
}

/// The weights quantized in `mode`, expanded: in float32 with `float32`, else in MLX's own
/// choice (the scales' dtype for affine, bfloat16 for the floating-point modes, as mlx-lm's
/// quantized embeddings get them).
#[allow(clippy::too_many_arguments)]
pub(crate) fn dequantize(
    w: &Array,
    scales: &Array,
    biases: Option<&Array>,
    group_size: i32,
    bits: i32,
    mode: QuantMode,
    float32: bool,
) -> Result<Array, Exception> {
    let biases = Optional::of(biases);
    let global = Optional::of(None);
    let dtype = mlx_sys::mlx_optional_dtype {
        value: mlx_sys::mlx_dtype__MLX_FLOAT32,
        has_value: float32,
    };
    call("dequantize", |res, s| unsafe {
        mlx_sys::mlx_dequantize(
            res,
            w.as_ptr(),
            scales.as_ptr(),
            biases.handle,
            some_int(group_size),
            some_int(bits),
            mode_name(mode).as_ptr(),
            global.handle,
            dtype,
            s,
        )
    })
}
