//! Serving a tensor-parallel model. Rank 0 is the model's worker as the controller knows it;
//! every serve-loop round, it hands the controller messages it took (requests, cancellations,
//! shutdown) to the other ranks over MLX's own collectives, and every rank feeds them to the
//! same scheduler. Scheduling is made independent of timing, so each rank makes the same
//! forward passes in the same order, and their `all_sum`s meet.
//!
//! The hand-over is an `all_sum` of rank 0's bytes with the other ranks' zeros: first the
//! length, then the payload, so no transport of our own is needed. MLX's ring polls its
//! sockets while it waits, which would keep an idle rank's core busy; ranks on this machine
//! therefore wait for a doorbell first, one byte on their stdin from rank 0 per round.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

use bincode::{Decode, Encode};
use mlx_rs::{transforms::eval, Array};
use opta_lmx_shared::protocol::ToWorker;

use crate::distributed::Group;

/// What rank 0 hands the other ranks.
#[derive(Debug, Clone, Encode, Decode)]
pub enum Mirrored {
    /// Once, after loading: the scheduler's settings, which must be the same on every rank.
    Start {
        max_batch: u32,
        prompt_cache_bytes: u64,
        tool_syntax: Option<String>,
        /// Every rank must split prompts alike.
        prefill_step: u32,
    },
    /// One serve-loop round's messages, in the order rank 0 handles them (often none: the
    /// round only steps).
    Round(Vec<ToWorker>),
}

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("the tensor-parallel group failed: {0}")]
    Collective(String),
    #[error("a tensor-parallel message did not decode: {0}")]
    Decode(String),
}

/// Rank 0: hands `msg` to every other rank.
pub fn send(group: &Group, msg: &Mirrored) -> Result<(), MirrorError> {
    let bytes = bincode::encode_to_vec(msg, bincode::config::standard())
        .map_err(|e| MirrorError::Decode(e.to_string()))?;
    exchange(group, Some(&bytes)).map(|_| ())
}

/// Any other rank: the next message rank 0 sends.
pub fn receive(group: &Group) -> Result<Mirrored, MirrorError> {
    let bytes = exchange(group, None)?;
    let (msg, _) = bincode::decode_from_slice(&bytes, bincode::config::standard())
        .map_err(|e| MirrorError::Decode(e.to_string()))?;
    Ok(msg)
}

/// Rank 0's `bytes` on every rank: the others contribute zeros of the same length.
fn exchange(group: &Group, bytes: Option<&[u8]>) -> Result<Vec<u8>, MirrorError> {
    let fail = |e: mlx_rs::error::Exception| MirrorError::Collective(e.to_string());
    let len = bytes.map_or(0, <[u8]>::len) as i32;
    let len = group
        .all_sum(&Array::from_slice(&[len], &[1]))
        .map_err(fail)?;
    eval([&len]).map_err(fail)?;
    let n = len.as_slice::<i32>().first().copied().unwrap_or(0).max(0) as usize;
    if n == 0 {
        return Ok(Vec::new());
    }
    // Bytes travel as int32 so that no backend's reduction of a narrow type is relied on.
    let words: Vec<i32> = match bytes {
        Some(b) => b.iter().map(|&x| i32::from(x)).collect(),
        None => vec![0; n],
    };
    let sum = group
        .all_sum(&Array::from_slice(&words, &[n as i32]))
        .map_err(fail)?;
    eval([&sum]).map_err(fail)?;
    Ok(sum.as_slice::<i32>().iter().map(|&x| x as u8).collect())
}

/// The other ranks of a group on this machine, started by rank 0 as `follow` processes over the
/// ring on loopback ports. Being rank 0's children, in its process group, they end with it.
pub struct LocalRanks {
    pub hostfile: PathBuf,
    pub children: Vec<Child>,
    /// Each child's doorbell (its stdin).
    pub doorbells: Vec<ChildStdin>,
    _dir: tempfile::TempDir,
}

/// Rank 0: wakes every local rank for the round about to be handed over. A rank that is gone
/// is noticed by its watcher, not here.
pub fn ring_doorbells(doorbells: &mut [ChildStdin]) {
    for d in doorbells {
        let _ = d.write_all(&[1]).and_then(|()| d.flush());
    }
}

/// A local rank: waits, without spinning, until rank 0 has a round for it. `false`: rank 0 is
/// gone (the pipe closed).
pub fn await_doorbell() -> bool {
    let mut byte = [0u8; 1];
    matches!(std::io::stdin().lock().read(&mut byte), Ok(1))
}

/// Writes a ring hostfile of `ranks` free loopback ports and starts ranks 1.. of `model_dir`.
pub fn start_local_ranks(ranks: u32, model_dir: &Path) -> std::io::Result<LocalRanks> {
    let dir = tempfile::tempdir()?;
    let listeners = (0..ranks)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    let hosts = listeners
        .iter()
        .map(|l| Ok(vec![format!("127.0.0.1:{}", l.local_addr()?.port())]))
        .collect::<std::io::Result<Vec<_>>>()?;
    drop(listeners);
    let hostfile = dir.path().join("hosts.json");
    std::fs::write(&hostfile, serde_json::to_string(&hosts)?)?;
    let exe = std::env::current_exe()?;
    let mut children = (1..ranks)
        .map(|rank| {
            Command::new(&exe)
                .args([
                    "follow",
                    "--doorbell",
                    "--tensor-parallel",
                    "ring",
                    "--model",
                ])
                .arg(model_dir)
                .env("MLX_RANK", rank.to_string())
                .env("MLX_HOSTFILE", &hostfile)
                .stdin(Stdio::piped())
                .spawn()
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    let doorbells = children.iter_mut().filter_map(|c| c.stdin.take()).collect();
    Ok(LocalRanks {
        hostfile,
        children,
        doorbells,
        _dir: dir,
    })
}
