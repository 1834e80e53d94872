//! MLX's distributed layer: a group of processes (ranks) and the
//! collectives between them, over MLX's own backends (`ring` over TCP,
//! `nccl` between NVIDIA GPUs, `mpi`, `jaccl`). Errors come back as values.
//!
//! A process learns its place from the environment its launcher sets, as
//! `mlx.launch` does: for `ring`, `MLX_RANK` and `MLX_HOSTFILE` (a JSON
//! file listing each rank's `"ip:port"` addresses).
//!
//! ```no_run
//! use mlx_metal::distributed::Group;
//! use mlx_metal::Array;
//!
//! let group = Group::init(Some("ring"), true)?;
//! let x = Array::from_vec(&[group.rank() as f32])?;
//! let total = group.all_sum(&x)?; // 0 + 1 + ... + (size - 1) on every rank
//! # Ok::<(), mlx_metal::Error>(())
//! ```

use std::ffi::CString;

use mlx_metal_sys as sys;

use crate::status::{call, init};
use crate::{Array, Dtype, Error, Result};

/// Backends MLX may be built with.
pub const BACKENDS: [&str; 4] = ["ring", "nccl", "mpi", "jaccl"];

fn backend_name(backend: Option<&str>) -> Result<Option<CString>> {
    match backend {
        None | Some("any") => Ok(None),
        Some(b) if BACKENDS.contains(&b) => Ok(Some(CString::new(b).expect("no NUL"))),
        Some(other) => Err(Error::InvalidArgument(format!(
            "unknown distributed backend `{other}` (any, {})",
            BACKENDS.join(", ")
        ))),
    }
}

/// Whether `backend` (any when `None`) is built into this MLX.
pub fn is_available(backend: Option<&str>) -> Result<bool> {
    let name = backend_name(backend)?;
    init();
    let ptr = name.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: `ptr` is null or a NUL-terminated string alive for the call.
    Ok(unsafe { sys::mlx_distributed_is_available(ptr) })
}

/// Words in the first part of [`Group::broadcast_bytes`]: messages of up
/// to 4 × 255 bytes take one collective.
pub const BROADCAST_WORDS: usize = 256;

/// `bytes` into little-endian 32-bit words (the last one zero-padded).
fn pack(bytes: &[u8], words: &mut [i32]) {
    for (w, chunk) in words.iter_mut().zip(bytes.chunks(4)) {
        let mut b = [0u8; 4];
        b[..chunk.len()].copy_from_slice(chunk);
        *w = i32::from_le_bytes(b);
    }
}

/// The first `len` bytes of `words`.
fn unpack(words: &[i32], len: usize) -> Vec<u8> {
    let mut out: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    out.truncate(len);
    out
}

/// A group of ranks. Every collective must be called by every rank of the
/// group, in the same order.
pub struct Group {
    raw: sys::mlx_distributed_group,
}

// SAFETY: the group handle is an immutable reference-counted MLX object;
// collectives on it are issued from one thread at a time by `&self` users.
unsafe impl Send for Group {}

impl Group {
    /// Joins the group the environment describes, with `backend` (the first
    /// available when `None`). With `strict`, a missing or broken
    /// configuration is an error; without it, a process alone gets a group
    /// of size 1.
    pub fn init(backend: Option<&str>, strict: bool) -> Result<Group> {
        let name = backend_name(backend)?;
        if let Some(b) = backend.filter(|_| name.is_some()) {
            if !is_available(Some(b))? {
                let mut built = Vec::new();
                for other in BACKENDS {
                    if is_available(Some(other))? {
                        built.push(other);
                    }
                }
                return Err(Error::InvalidArgument(format!(
                    "this MLX build has no `{b}` distributed backend (it has: {})",
                    built.join(", ")
                )));
            }
        }
        let ptr = name.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        // SAFETY: creates an empty handle owned by `group`.
        let mut group = Group {
            raw: unsafe { sys::mlx_distributed_group_new() },
        };
        // SAFETY: `group.raw` is owned here; `ptr` is null or a live C string.
        call(|| unsafe { sys::mlx_distributed_init(&mut group.raw, strict, ptr) })?;
        if group.raw.ctx.is_null() {
            return Err(Error::Mlx(format!(
                "no distributed group could be made with backend {}",
                backend.unwrap_or("any")
            )));
        }
        Ok(group)
    }

    /// This process's rank, 0-based.
    pub fn rank(&self) -> usize {
        // SAFETY: `self.raw` is a live group.
        unsafe { sys::mlx_distributed_group_rank(self.raw) }.max(0) as usize
    }

    /// Number of ranks.
    pub fn size(&self) -> usize {
        // SAFETY: `self.raw` is a live group.
        unsafe { sys::mlx_distributed_group_size(self.raw) }.max(1) as usize
    }

    /// Splits the group: ranks with the same `color` form a new group,
    /// ordered by `key` (their rank when `key` is negative).
    pub fn split(&self, color: i32, key: i32) -> Result<Group> {
        // SAFETY: creates an empty handle owned by `out`.
        let mut out = Group {
            raw: unsafe { sys::mlx_distributed_group_new() },
        };
        // SAFETY: `self.raw` is live; `out.raw` is owned by `out`.
        call(|| unsafe { sys::mlx_distributed_group_split(&mut out.raw, self.raw, color, key) })?;
        Ok(out)
    }

    /// The element-wise sum of `x` over all ranks.
    pub fn all_sum(&self, x: &Array) -> Result<Array> {
        // SAFETY: handles are valid; `res` is owned by the result.
        Array::build(|res, s| unsafe { sys::mlx_distributed_all_sum(res, x.raw(), self.raw, s) })
    }

    /// The element-wise maximum of `x` over all ranks.
    pub fn all_max(&self, x: &Array) -> Result<Array> {
        // SAFETY: handles are valid; `res` is owned by the result.
        Array::build(|res, s| unsafe { sys::mlx_distributed_all_max(res, x.raw(), self.raw, s) })
    }

    /// Every rank's `x` concatenated along the first axis, in rank order.
    pub fn all_gather(&self, x: &Array) -> Result<Array> {
        // SAFETY: handles are valid; `res` is owned by the result.
        Array::build(|res, s| unsafe { sys::mlx_distributed_all_gather(res, x.raw(), self.raw, s) })
    }

    /// Sends `x` to rank `dst`; the result must be evaluated for the send
    /// to happen.
    pub fn send(&self, x: &Array, dst: usize) -> Result<Array> {
        self.check_rank(dst)?;
        // SAFETY: handles are valid; `res` is owned by the result.
        Array::build(|res, s| unsafe {
            sys::mlx_distributed_send(res, x.raw(), dst as i32, self.raw, s)
        })
    }

    /// Receives an array of `shape` and `dtype` from rank `src`.
    pub fn recv(&self, shape: &[i32], dtype: Dtype, src: usize) -> Result<Array> {
        self.check_rank(src)?;
        // SAFETY: `shape` is valid for its length; handles are valid.
        Array::build(|res, s| unsafe {
            sys::mlx_distributed_recv(
                res,
                shape.as_ptr(),
                shape.len(),
                dtype.to_sys(),
                src as i32,
                self.raw,
                s,
            )
        })
    }

    /// Receives an array shaped and typed as `like` from rank `src`.
    pub fn recv_like(&self, like: &Array, src: usize) -> Result<Array> {
        self.check_rank(src)?;
        // SAFETY: handles are valid; `res` is owned by the result.
        Array::build(|res, s| unsafe {
            sys::mlx_distributed_recv_like(res, like.raw(), src as i32, self.raw, s)
        })
    }

    /// Rank 0's `bytes` on every rank (what the other ranks pass is not
    /// read). Made of [`all_sum`](Self::all_sum)s in which only rank 0
    /// adds anything: one of [`BROADCAST_WORDS`] 32-bit words (the length
    /// and up to 4 × 255 bytes), and a second for the rest of a longer
    /// message. Every rank must call it at the same point.
    pub fn broadcast_bytes(&self, bytes: &[u8]) -> Result<Vec<u8>> {
        let lead = self.rank() == 0;
        let head_room = 4 * (BROADCAST_WORDS - 1);
        let mut first = vec![0i32; BROADCAST_WORDS];
        if lead {
            let len = i32::try_from(bytes.len()).map_err(|_| {
                Error::InvalidArgument(format!("a broadcast of {} bytes", bytes.len()))
            })?;
            first[0] = len;
            pack(&bytes[..bytes.len().min(head_room)], &mut first[1..]);
        }
        let first = self.all_sum(&Array::from_vec(&first)?)?.to_vec::<i32>()?;
        let len = usize::try_from(first[0])
            .map_err(|_| Error::Mlx(format!("a broadcast said it holds {} bytes", first[0])))?;
        let mut out = unpack(&first[1..], len.min(head_room));
        if len > head_room {
            let rest = len - head_room;
            let mut words = vec![0i32; rest.div_ceil(4)];
            if lead {
                pack(&bytes[head_room..], &mut words);
            }
            let words = self.all_sum(&Array::from_vec(&words)?)?.to_vec::<i32>()?;
            out.extend(unpack(&words, rest));
        }
        Ok(out)
    }

    /// Seeds MLX's global random generator on every rank with one seed
    /// that rank 0 draws (from the clock and its process id), so that
    /// draws made without a key agree across ranks. Every rank must call
    /// it at the same point.
    pub fn share_random_seed(&self) -> Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mine = now ^ (u64::from(std::process::id()) << 32);
        let shared = self.broadcast_bytes(&mine.to_le_bytes())?;
        let seed = <[u8; 8]>::try_from(shared.as_slice())
            .map_err(|_| Error::Mlx(format!("a shared seed of {} bytes", shared.len())))?;
        crate::random::seed(u64::from_le_bytes(seed))
    }

    fn check_rank(&self, r: usize) -> Result<()> {
        if r >= self.size() || r == self.rank() {
            return Err(Error::InvalidArgument(format!(
                "rank {r} is not another rank of this group of {} (this is rank {})",
                self.size(),
                self.rank()
            )));
        }
        Ok(())
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if !self.raw.ctx.is_null() {
            // SAFETY: `self.raw` is owned and freed exactly once.
            unsafe { sys::mlx_distributed_group_free(self.raw) };
        }
    }
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("rank", &self.rank())
            .field("size", &self.size())
            .finish()
    }
}
