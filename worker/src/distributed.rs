//! MLX's own distributed engine (`mx.distributed`: ring over TCP, JACCL, MPI, NCCL) through
//! mlx-c, which mlx-rs does not wrap: a process group and the one collective tensor
//! parallelism needs, `all_sum`. The backend reads its peers from MLX's environment
//! (`MLX_RANK` and `MLX_HOSTFILE` for the ring), as `mlx.launch` sets them.

use std::ffi::CString;
use std::fmt;

use mlx_rs::error::Exception;
use mlx_rs::{Array, Stream};

/// This process's place in a group of ranks that each hold part of a model.
pub struct Group {
    raw: mlx_sys::mlx_distributed_group,
    rank: i32,
    size: i32,
}

// SAFETY: the handle points to MLX's reference-counted group, which is never changed after
// `init`; collectives are issued only from the thread that runs the model.
unsafe impl Send for Group {}
unsafe impl Sync for Group {}

impl fmt::Debug for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Group(rank {} of {})", self.rank, self.size)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DistributedError {
    #[error("MLX has no distributed backend {0:?} in this build")]
    Unavailable(String),
    #[error(
        "MLX could not join the {0} group (for the ring backend, set MLX_RANK and MLX_HOSTFILE \
         as `mlx.launch` does)"
    )]
    Init(String),
}

impl Group {
    /// Joins the group of `backend` ("ring", "jaccl", "mpi", "nccl" or "any").
    pub fn init(backend: &str) -> Result<Group, DistributedError> {
        let name =
            CString::new(backend).map_err(|_| DistributedError::Unavailable(backend.into()))?;
        // SAFETY: a valid C string for the duration of the calls.
        if !unsafe { mlx_sys::mlx_distributed_is_available(name.as_ptr()) } {
            return Err(DistributedError::Unavailable(backend.into()));
        }
        // SAFETY: `raw` is written by a successful init and freed in `drop`.
        let mut raw = unsafe { mlx_sys::mlx_distributed_group_new() };
        if unsafe { mlx_sys::mlx_distributed_init(&mut raw, true, name.as_ptr()) } != 0 {
            unsafe { mlx_sys::mlx_distributed_group_free(raw) };
            return Err(DistributedError::Init(backend.into()));
        }
        let (rank, size) = unsafe {
            (
                mlx_sys::mlx_distributed_group_rank(raw),
                mlx_sys::mlx_distributed_group_size(raw),
            )
        };
        Ok(Group { raw, rank, size })
    }

    pub fn rank(&self) -> i32 {
        self.rank
    }

    pub fn size(&self) -> i32 {
        self.size
    }

    /// The element-wise sum of `x` over every rank, the same on each.
    pub fn all_sum(&self, x: &Array) -> Result<Array, Exception> {
        let stream = Stream::thread_local_or_default();
        // SAFETY: a fresh array for the op to fill; freed on failure, owned by the result
        // on success.
        let mut res = unsafe { mlx_sys::mlx_array_new() };
        let status = unsafe {
            mlx_sys::mlx_distributed_all_sum(&mut res, x.as_ptr(), self.raw, stream.as_ptr())
        };
        if status != 0 {
            unsafe { mlx_sys::mlx_array_free(res) };
            return Err(Exception::custom("MLX all_sum failed"));
        }
        Ok(unsafe { Array::from_ptr(res) })
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: created by `init` and not shared outside this value.
        unsafe { mlx_sys::mlx_distributed_group_free(self.raw) };
    }
}
