//! Reading and writing tensor files through MLX: `.safetensors` (mapped
//! and loaded lazily, without extra copies) and the tensors of `.gguf`
//! files.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::path::Path;

use mlx_metal_sys as sys;

use crate::status::{call, init};
use crate::{Array, Device, Error, Result, Stream};

/// The tensors and string metadata of one safetensors file.
#[derive(Debug, Default)]
pub struct Safetensors {
    /// Tensors by name.
    pub tensors: HashMap<String, Array>,
    /// The `__metadata__` entries.
    pub metadata: HashMap<String, String>,
}

struct StringMap(sys::mlx_map_string_to_string);

impl Drop for StringMap {
    fn drop(&mut self) {
        // SAFETY: owned handle, freed once.
        unsafe { sys::mlx_map_string_to_string_free(self.0) };
    }
}

struct ArrayMap(sys::mlx_map_string_to_array);

impl Drop for ArrayMap {
    fn drop(&mut self) {
        // SAFETY: owned handle, freed once.
        unsafe { sys::mlx_map_string_to_array_free(self.0) };
    }
}

fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| Error::File {
        path: path.to_path_buf(),
        message: "path contains a NUL byte".into(),
    })
}

fn file_error(path: &Path, e: Error) -> Error {
    let message = match e {
        Error::Mlx(m) => m,
        other => other.to_string(),
    };
    Error::File {
        path: path.to_path_buf(),
        message,
    }
}

/// Loads every tensor and the metadata of `path`. A missing, truncated or
/// corrupt file is an [`Error::File`] naming it.
///
/// ```no_run
/// let st = mlx_metal::load_safetensors("model.safetensors")?;
/// println!("{} tensors", st.tensors.len());
/// # Ok::<(), mlx_metal::Error>(())
/// ```
pub fn load_safetensors(path: impl AsRef<Path>) -> Result<Safetensors> {
    let path = path.as_ref();
    if !path.is_file() {
        return Err(Error::File {
            path: path.to_path_buf(),
            message: "no such file".into(),
        });
    }
    let cpath = c_path(path)?;
    init();
    let stream = Stream::default_for(&Device::cpu())?;
    // SAFETY: fresh handles owned by the guards below.
    let arrays = ArrayMap(unsafe { sys::mlx_map_string_to_array_new() });
    // SAFETY: as above.
    let strings = StringMap(unsafe { sys::mlx_map_string_to_string_new() });
    let (mut arrays, mut strings) = (arrays, strings);
    // SAFETY: `cpath` outlives the call; the maps are owned by the guards and filled in place.
    call(|| unsafe {
        sys::mlx_load_safetensors(&mut arrays.0, &mut strings.0, cpath.as_ptr(), stream.raw())
    })
    .map_err(|e| file_error(path, e))?;

    let mut out = Safetensors {
        tensors: arrays_of(&arrays),
        ..Default::default()
    };
    // SAFETY: iterator over a live map, freed below.
    let it = unsafe { sys::mlx_map_string_to_string_iterator_new(strings.0) };
    loop {
        let mut key: *const std::ffi::c_char = std::ptr::null();
        let mut value: *const std::ffi::c_char = std::ptr::null();
        // SAFETY: `it` is live; mlx-c writes pointers to strings owned by the map.
        let rc = unsafe { sys::mlx_map_string_to_string_iterator_next(&mut key, &mut value, it) };
        if rc != 0 || key.is_null() || value.is_null() {
            break;
        }
        // SAFETY: both are NUL-terminated strings owned by the map.
        let (k, v) = unsafe { (CStr::from_ptr(key), CStr::from_ptr(value)) };
        out.metadata.insert(
            k.to_string_lossy().into_owned(),
            v.to_string_lossy().into_owned(),
        );
    }
    // SAFETY: `it` was created above and is freed once.
    unsafe { sys::mlx_map_string_to_string_iterator_free(it) };
    Ok(out)
}

/// Moves the entries of an mlx-c array map into a Rust map.
fn arrays_of(arrays: &ArrayMap) -> HashMap<String, Array> {
    let mut out = HashMap::new();
    // SAFETY: iterator over a live map, freed below.
    let it = unsafe { sys::mlx_map_string_to_array_iterator_new(arrays.0) };
    loop {
        let mut key: *const std::ffi::c_char = std::ptr::null();
        // SAFETY: a fresh array handle, owned by `value`.
        let mut value = Array::from_raw(unsafe { sys::mlx_array_new() });
        // SAFETY: `it` is live; mlx-c writes the key pointer and fills `value`'s handle in place.
        let rc =
            unsafe { sys::mlx_map_string_to_array_iterator_next(&mut key, value.raw_mut(), it) };
        if rc != 0 || key.is_null() {
            break;
        }
        // SAFETY: `key` is a NUL-terminated string owned by the map.
        let name = unsafe { CStr::from_ptr(key) }
            .to_string_lossy()
            .into_owned();
        out.insert(name, value);
    }
    // SAFETY: `it` was created above and is freed once.
    unsafe { sys::mlx_map_string_to_array_iterator_free(it) };

    out
}

/// Loads the tensors of the GGUF file at `path` with MLX's GGUF reader:
/// `Q4_0`, `Q4_1` and `Q8_0` tensors become MLX affine-quantised triples
/// (`NAME.weight` packed as uint32, `NAME.scales`, `NAME.biases`, group size
/// 32); float tensors keep their type. Validate the file's header first
/// (`inference::gguf::Gguf::open`): MLX trusts the offsets it reads.
pub fn load_gguf_tensors(path: impl AsRef<Path>) -> Result<HashMap<String, Array>> {
    let path = path.as_ref();
    let cpath = c_path(path)?;
    init();
    let stream = Stream::default_for(&Device::cpu())?;
    // SAFETY: a fresh handle, freed by the guard below.
    let gguf = GgufHandle(unsafe { sys::mlx_io_gguf_new() });
    let mut gguf = gguf;
    // SAFETY: `cpath` outlives the call; the handle is owned by the guard and filled in place.
    call(|| unsafe { sys::mlx_load_gguf(&mut gguf.0, cpath.as_ptr(), stream.raw()) })
        .map_err(|e| file_error(path, e))?;
    // SAFETY: a fresh vector handle, freed below.
    let mut keys = unsafe { sys::mlx_vector_string_new() };
    // SAFETY: live handles; mlx-c fills `keys`.
    let listed = call(|| unsafe { sys::mlx_io_gguf_get_keys(&mut keys, gguf.0) });
    let mut names = Vec::new();
    if listed.is_ok() {
        // SAFETY: `keys` is live.
        let n = unsafe { sys::mlx_vector_string_size(keys) };
        for i in 0..n {
            let mut key: *mut std::ffi::c_char = std::ptr::null_mut();
            // SAFETY: `i` is in range; mlx-c points `key` at a string owned by the vector.
            let rc = unsafe { sys::mlx_vector_string_get(&mut key, keys, i) };
            if rc == 0 && !key.is_null() {
                // SAFETY: NUL-terminated and owned by the live vector.
                names.push(unsafe { CStr::from_ptr(key) }.to_owned());
            }
        }
    }
    // SAFETY: created above, freed once.
    unsafe { sys::mlx_vector_string_free(keys) };
    listed.map_err(|e| file_error(path, e))?;
    let mut out = HashMap::with_capacity(names.len());
    for name in names {
        // SAFETY: a fresh array handle, owned by `value`.
        let mut value = Array::from_raw(unsafe { sys::mlx_array_new() });
        // SAFETY: live handle and key; mlx-c fills `value`'s handle in place.
        call(|| unsafe { sys::mlx_io_gguf_get_array(value.raw_mut(), gguf.0, name.as_ptr()) })
            .map_err(|e| file_error(path, e))?;
        out.insert(name.to_string_lossy().into_owned(), value);
    }
    Ok(out)
}

struct GgufHandle(sys::mlx_io_gguf);

impl Drop for GgufHandle {
    fn drop(&mut self) {
        // SAFETY: owned handle, freed once.
        unsafe { sys::mlx_io_gguf_free(self.0) };
    }
}

/// Writes `tensors` and `metadata` to `path` (replacing the file).
pub fn save_safetensors(
    path: impl AsRef<Path>,
    tensors: &HashMap<String, Array>,
    metadata: &HashMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let cpath = c_path(path)?;
    init();
    // SAFETY: fresh handles owned by the guards.
    let arrays = ArrayMap(unsafe { sys::mlx_map_string_to_array_new() });
    // SAFETY: as above.
    let strings = StringMap(unsafe { sys::mlx_map_string_to_string_new() });
    for (name, array) in tensors {
        let key = CString::new(name.as_str())
            .map_err(|_| Error::InvalidArgument(format!("tensor name {name:?} contains NUL")))?;
        // SAFETY: live map, valid key and array; mlx-c copies both.
        call(|| unsafe {
            sys::mlx_map_string_to_array_insert(arrays.0, key.as_ptr(), array.raw())
        })?;
    }
    for (k, v) in metadata {
        let (key, value) = (
            CString::new(k.as_str())
                .map_err(|_| Error::InvalidArgument(format!("metadata key {k:?} contains NUL")))?,
            CString::new(v.as_str()).map_err(|_| {
                Error::InvalidArgument(format!("metadata value {v:?} contains NUL"))
            })?,
        );
        // SAFETY: live map, valid strings; mlx-c copies both.
        call(|| unsafe {
            sys::mlx_map_string_to_string_insert(strings.0, key.as_ptr(), value.as_ptr())
        })?;
    }
    // SAFETY: live maps and a path that outlives the call.
    call(|| unsafe { sys::mlx_save_safetensors(cpath.as_ptr(), arrays.0, strings.0) })
        .map_err(|e| file_error(path, e))
}
