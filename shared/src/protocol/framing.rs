//! Length-prefixed frames: a 4-byte little-endian payload length, then the bincode-2 payload.
//! The length is checked against [`MAX_FRAME_BYTES`] before anything is allocated, so a
//! corrupt or hostile prefix cannot make the reader allocate gigabytes.

use std::io;

use bincode::config::Config;
use bincode::enc::write::SizeWriter;
use bincode::enc::EncoderImpl;
use bincode::{Decode, Encode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Upper bound on one frame's payload, both directions. Far above any real message (a
/// 1M-token prompt is at most 5 MiB), low enough that a bad prefix cannot exhaust memory.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// bincode's decode limit. It counts in-memory sizes (`size_of::<T>() * len` for each
/// collection), not wire bytes: a token id is 1 byte on the wire but 4 in a `Vec<u32>`, so a
/// limit of `MAX_FRAME_BYTES` would refuse legitimate near-limit frames. This still bounds what
/// one frame can make the decoder allocate.
pub const MAX_DECODED_BYTES: usize = 8 * MAX_FRAME_BYTES;

const PREFIX_BYTES: usize = 4;

// The length prefix is a u32.
const _: () = assert!(MAX_FRAME_BYTES <= u32::MAX as usize);

/// The one bincode configuration both ends use. The limit only affects decoding, so the wire
/// format is plain `bincode::config::standard()` (little-endian, varint integers).
fn config() -> impl Config {
    bincode::config::standard().with_limit::<MAX_DECODED_BYTES>()
}

/// What can go wrong reading or writing frames. Any of these leaves the stream unusable
/// (frames have no resync marker), so the connection should be dropped.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("socket I/O failed: {0}")]
    Io(#[from] io::Error),
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge { len: usize, max: usize },
    #[error("undecodable frame: {0}")]
    Decode(String),
    #[error("cannot encode message: {0}")]
    Encode(String),
    #[error("connection closed in the middle of a frame")]
    TruncatedFrame,
    #[error("frame has bytes after its message")]
    TrailingBytes,
}

fn check_len(len: usize) -> Result<(), ProtocolError> {
    if len > MAX_FRAME_BYTES {
        return Err(ProtocolError::FrameTooLarge {
            len,
            max: MAX_FRAME_BYTES,
        });
    }
    Ok(())
}

fn payload_len(prefix: [u8; PREFIX_BYTES]) -> Result<usize, ProtocolError> {
    let len = usize::try_from(u32::from_le_bytes(prefix)).unwrap_or(usize::MAX);
    check_len(len)?;
    Ok(len)
}

fn encode_error(e: bincode::error::EncodeError) -> ProtocolError {
    ProtocolError::Encode(e.to_string())
}

/// EOF inside a payload is a truncated frame, not a generic I/O error: callers treat it as
/// the peer dying mid-message.
fn eof_is_truncation(e: io::Error) -> ProtocolError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        ProtocolError::TruncatedFrame
    } else {
        ProtocolError::Io(e)
    }
}

/// Encodes `msg` as one complete frame (prefix included). The size is measured first, so an
/// oversized message is refused without building its buffer.
pub fn encode_frame<T: Encode + ?Sized>(msg: &T) -> Result<Vec<u8>, ProtocolError> {
    let mut sizer = EncoderImpl::new(SizeWriter::default(), config());
    msg.encode(&mut sizer).map_err(encode_error)?;
    let len = sizer.into_writer().bytes_written;
    check_len(len)?;
    let prefix = u32::try_from(len).map_err(|_| ProtocolError::FrameTooLarge {
        len,
        max: MAX_FRAME_BYTES,
    })?;

    let mut frame = Vec::with_capacity(PREFIX_BYTES + len);
    frame.extend_from_slice(&prefix.to_le_bytes());
    bincode::encode_into_std_write(msg, &mut frame, config()).map_err(encode_error)?;
    if frame.len() != PREFIX_BYTES + len {
        // Only a non-deterministic hand-written Encode impl could get here.
        return Err(ProtocolError::Encode(format!(
            "message measured {len} bytes but encoded to {}",
            frame.len() - PREFIX_BYTES
        )));
    }
    Ok(frame)
}

/// Decodes one frame's payload (without its prefix). The payload must hold exactly one
/// message: leftover bytes mean the two ends disagree on the types, so they are an error.
pub fn decode_payload<T: Decode<()>>(bytes: &[u8]) -> Result<T, ProtocolError> {
    check_len(bytes.len())?;
    let (msg, used) = bincode::decode_from_slice(bytes, config())
        .map_err(|e| ProtocolError::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(ProtocolError::TrailingBytes);
    }
    Ok(msg)
}

/// Reads one frame. `Ok(None)` means the peer closed the stream cleanly between frames; EOF
/// anywhere inside a frame is [`ProtocolError::TruncatedFrame`].
///
/// Not cancel-safe: if the future is dropped mid-frame the stream is out of step. Read from
/// one task that owns the reader (and forwards messages over a channel) rather than inside a
/// `select!` whose other branches may win.
pub async fn read_frame<T, R>(r: &mut R) -> Result<Option<T>, ProtocolError>
where
    T: Decode<()>,
    R: AsyncRead + Unpin + ?Sized,
{
    // The first byte tells a clean close (EOF between frames) from a truncated frame.
    let mut prefix = [0u8; PREFIX_BYTES];
    loop {
        match r.read(&mut prefix[..1]).await {
            Ok(0) => return Ok(None),
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ProtocolError::Io(e)),
        }
    }
    r.read_exact(&mut prefix[1..])
        .await
        .map_err(eof_is_truncation)?;
    let mut payload = vec![0u8; payload_len(prefix)?];
    r.read_exact(&mut payload)
        .await
        .map_err(eof_is_truncation)?;
    decode_payload(&payload).map(Some)
}

/// Writes one frame and flushes, so a message never sits in a buffer while the peer waits.
///
/// Not cancel-safe: a write dropped midway leaves half a frame on the stream. Write from one
/// task that owns the writer.
pub async fn write_frame<T, W>(w: &mut W, msg: &T) -> Result<(), ProtocolError>
where
    T: Encode + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let frame = encode_frame(msg)?;
    w.write_all(&frame).await?;
    w.flush().await?;
    Ok(())
}

/// Blocking [`read_frame`], for code outside the async runtime (the worker's engine thread).
pub fn read_frame_blocking<T, R>(r: &mut R) -> Result<Option<T>, ProtocolError>
where
    T: Decode<()>,
    R: io::Read + ?Sized,
{
    let mut prefix = [0u8; PREFIX_BYTES];
    // As in `read_frame`: EOF before the first byte is a clean close.
    let first = loop {
        match r.read(&mut prefix[..1]) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => break other?,
        }
    };
    if first == 0 {
        return Ok(None);
    }
    r.read_exact(&mut prefix[1..]).map_err(eof_is_truncation)?;
    let mut payload = vec![0u8; payload_len(prefix)?];
    r.read_exact(&mut payload).map_err(eof_is_truncation)?;
    decode_payload(&payload).map(Some)
}

/// Blocking [`write_frame`]: one `write_all` of the whole frame, then a flush.
pub fn write_frame_blocking<T, W>(w: &mut W, msg: &T) -> Result<(), ProtocolError>
where
    T: Encode + ?Sized,
    W: io::Write + ?Sized,
{
    let frame = encode_frame(msg)?;
    w.write_all(&frame)?;
    w.flush()?;
    Ok(())
}
