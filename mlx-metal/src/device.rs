//! Devices and streams.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use mlx_metal_sys as sys;

use crate::status::{call, init, read_string};
use crate::Result;

/// Kind of compute device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceType {
    /// The host CPU.
    Cpu,
    /// The GPU: Metal on macOS, CUDA on Linux when MLX has it.
    Gpu,
}

/// An MLX device (owned handle, freed on drop).
pub struct Device {
    raw: sys::mlx_device,
}

// SAFETY: an mlx_device is an immutable value (type and index) behind a heap pointer.
unsafe impl Send for Device {}
// SAFETY: see `Send`; no method mutates the handle through `&self`.
unsafe impl Sync for Device {}

static DEFAULT_GENERATION: AtomicU64 = AtomicU64::new(0);

impl Device {
    /// A device of `kind` (index 0).
    pub fn new(kind: DeviceType) -> Device {
        init();
        let t = match kind {
            DeviceType::Cpu => sys::mlx_device_type::MLX_CPU,
            DeviceType::Gpu => sys::mlx_device_type::MLX_GPU,
        };
        // SAFETY: creates a new handle that this value owns and frees.
        let raw = unsafe { sys::mlx_device_new_type(t, 0) };
        Device { raw }
    }

    /// The CPU.
    pub fn cpu() -> Device {
        Device::new(DeviceType::Cpu)
    }

    /// The GPU (which may not be available: see [`is_available`](Self::is_available)).
    pub fn gpu() -> Device {
        Device::new(DeviceType::Gpu)
    }

    /// The device MLX uses when none is named.
    pub fn default_device() -> Result<Device> {
        // SAFETY: a fresh empty handle, owned by the returned value.
        let mut dev = Device {
            raw: unsafe { sys::mlx_device_new() },
        };
        // SAFETY: `dev.raw` is a valid handle to write into.
        call(|| unsafe { sys::mlx_get_default_device(&mut dev.raw) })?;
        Ok(dev)
    }

    /// Makes this the default device for ops created afterwards.
    pub fn set_default(&self) -> Result<()> {
        // SAFETY: `self.raw` is a valid handle.
        call(|| unsafe { sys::mlx_set_default_device(self.raw) })?;
        DEFAULT_GENERATION.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// CPU or GPU.
    pub fn kind(&self) -> Result<DeviceType> {
        let mut t = sys::mlx_device_type::MLX_CPU;
        // SAFETY: `self.raw` is valid and `t` is a live out-parameter.
        call(|| unsafe { sys::mlx_device_get_type(&mut t, self.raw) })?;
        Ok(match t {
            sys::mlx_device_type::MLX_CPU => DeviceType::Cpu,
            sys::mlx_device_type::MLX_GPU => DeviceType::Gpu,
        })
    }

    /// Whether this MLX build can run on the device.
    pub fn is_available(&self) -> bool {
        let mut avail = false;
        // SAFETY: `self.raw` is valid and `avail` is a live out-parameter.
        call(|| unsafe { sys::mlx_device_is_available(&mut avail, self.raw) }).is_ok() && avail
    }

    pub(crate) fn raw(&self) -> sys::mlx_device {
        self.raw
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // SAFETY: `self.raw` is a valid handle.
        let text = read_string(|s| unsafe { sys::mlx_device_tostring(s, self.raw) })
            .unwrap_or_else(|_| "Device(?)".to_string());
        f.write_str(&text)
    }
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: `raw` is owned by this value and freed exactly once.
        unsafe { sys::mlx_device_free(self.raw) };
    }
}

/// A queue of work on a device (owned handle, freed on drop).
pub struct Stream {
    raw: sys::mlx_stream,
}

impl Stream {
    /// The default stream of `device`.
    pub fn default_for(device: &Device) -> Result<Stream> {
        init();
        // SAFETY: a fresh empty handle, owned by the returned value.
        let mut s = Stream {
            raw: unsafe { sys::mlx_stream_new() },
        };
        // SAFETY: `s.raw` and `device.raw()` are valid handles.
        call(|| unsafe { sys::mlx_get_default_stream(&mut s.raw, device.raw()) })?;
        Ok(s)
    }

    /// A new stream on `device`.
    pub fn new(device: &Device) -> Stream {
        init();
        // SAFETY: creates a new handle that this value owns and frees.
        Stream {
            raw: unsafe { sys::mlx_stream_new_device(device.raw()) },
        }
    }

    /// Waits until all work queued on this stream has finished.
    pub fn synchronize(&self) -> Result<()> {
        // SAFETY: `self.raw` is a valid handle.
        call(|| unsafe { sys::mlx_synchronize(self.raw) })
    }

    pub(crate) fn raw(&self) -> sys::mlx_stream {
        self.raw
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // SAFETY: `raw` is owned by this value and freed exactly once.
        unsafe { sys::mlx_stream_free(self.raw) };
    }
}

thread_local! {
    static CURRENT: RefCell<Option<(u64, Stream)>> = const { RefCell::new(None) };
}

/// Runs `f` with the default stream of the default device, cached per thread
/// and refreshed when [`Device::set_default`] changes the default.
pub(crate) fn with_default_stream<R>(f: impl FnOnce(sys::mlx_stream) -> Result<R>) -> Result<R> {
    let generation = DEFAULT_GENERATION.load(Ordering::SeqCst);
    let raw = CURRENT.with(|slot| -> Result<sys::mlx_stream> {
        let mut slot = slot.borrow_mut();
        match &*slot {
            Some((g, s)) if *g == generation => Ok(s.raw()),
            _ => {
                let stream = Stream::default_for(&Device::default_device()?)?;
                let raw = stream.raw();
                *slot = Some((generation, stream));
                Ok(raw)
            }
        }
    })?;
    f(raw)
}
