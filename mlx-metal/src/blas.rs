//! The BLAS library behind MLX's CPU matrix products, found at run time,
//! and its thread count.
//!
//! MLX's CPU backend runs every operation of a stream, one after the
//! other, on that stream's single worker thread; float32/float64 matrix
//! products are the only multi-threaded work, and they happen inside BLAS
//! (`cblas_sgemm`) while that worker waits for the result. So BLAS may use
//! every core the process may use, and no more: OpenBLAS's own default
//! counts the machine's CPUs (ignoring a container's CPU quota), which
//! oversubscribes a quota-limited process. When the first MLX call is made
//! this module sets OpenBLAS's thread count to
//! [`std::thread::available_parallelism`] (affinity and cgroup quota
//! aware), unless the user chose one with `OPENBLAS_NUM_THREADS`,
//! `GOTO_NUM_THREADS` or `OMP_NUM_THREADS`.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::fmt;
use std::path::{Path, PathBuf};

/// Which kind of BLAS MLX's CPU matrix products run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlasKind {
    /// OpenBLAS (what `cargo xtask build-mlx` wires in on Linux).
    OpenBlas,
    /// Apple's Accelerate framework (macOS).
    Accelerate,
    /// The reference (netlib) BLAS bundled with MLX's Linux wheel: correct
    /// but slow.
    Reference,
    /// Some other library, named by [`BlasInfo::library`].
    Other,
    /// No BLAS symbol could be found in the process.
    Unknown,
}

/// The BLAS library in use, as found in the running process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlasInfo {
    /// What kind of library it is.
    pub kind: BlasKind,
    /// Its version, when it says (OpenBLAS does).
    pub version: Option<String>,
    /// How many threads it uses, when it says.
    pub threads: Option<usize>,
    /// The file `cblas_sgemm` comes from, symbolic links resolved.
    pub library: Option<PathBuf>,
}

impl BlasInfo {
    /// True for an optimised BLAS (OpenBLAS or Accelerate).
    pub fn is_optimized(&self) -> bool {
        matches!(self.kind, BlasKind::OpenBlas | BlasKind::Accelerate)
    }
}

impl fmt::Display for BlasInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            BlasKind::OpenBlas => {
                f.write_str("OpenBLAS")?;
                if let Some(v) = &self.version {
                    write!(f, " {v}")?;
                }
                if let Some(n) = self.threads {
                    write!(f, ", {n} thread{}", if n == 1 { "" } else { "s" })?;
                }
                Ok(())
            }
            BlasKind::Accelerate => f.write_str("Accelerate"),
            BlasKind::Reference => f.write_str("reference (MLX's bundled netlib BLAS, slow)"),
            BlasKind::Other => match &self.library {
                Some(p) => write!(f, "{}", p.display()),
                None => f.write_str("unknown"),
            },
            BlasKind::Unknown => f.write_str("none found"),
        }
    }
}

/// Looks `name` up in `handle` (a `dlopen` handle or `RTLD_DEFAULT`).
fn symbol(handle: *mut c_void, name: &str) -> Option<*mut c_void> {
    let name = CString::new(name).ok()?;
    // SAFETY: `handle` is RTLD_DEFAULT or a live handle from `dlopen`, and
    // `name` is NUL-terminated; dlsym only reads them.
    let ptr = unsafe { libc::dlsym(handle, name.as_ptr()) };
    (!ptr.is_null()).then_some(ptr)
}

/// The file the loaded symbol at `ptr` belongs to, as the loader opened it.
fn file_of(ptr: *mut c_void) -> Option<PathBuf> {
    // SAFETY: an all-zero Dl_info is a valid out-parameter (null pointers).
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: `ptr` is the address of a loaded symbol; `info` is live.
    if unsafe { libc::dladdr(ptr, &mut info) } == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dladdr filled `dli_fname` with a NUL-terminated path owned by
    // the loader, copied out at once.
    let name = unsafe { CStr::from_ptr(info.dli_fname) };
    Some(PathBuf::from(name.to_string_lossy().into_owned()))
}

/// An already loaded library, opened again to search it and its
/// dependencies; closed on drop.
struct Loaded(*mut c_void);

impl Loaded {
    fn open(path: &Path) -> Option<Loaded> {
        let name = CString::new(path.as_os_str().to_string_lossy().into_owned()).ok()?;
        // SAFETY: NUL-terminated path; RTLD_NOLOAD only takes a new
        // reference to a library that is already loaded, never loads one.
        let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD) };
        (!handle.is_null()).then_some(Loaded(handle))
    }
}

impl Drop for Loaded {
    fn drop(&mut self) {
        // SAFETY: the handle came from a successful dlopen and is closed once.
        unsafe { libc::dlclose(self.0) };
    }
}

type GetConfig = unsafe extern "C" fn() -> *const c_char;
type GetThreads = unsafe extern "C" fn() -> c_int;
type SetThreads = unsafe extern "C" fn(c_int);

/// OpenBLAS's version (`openblas_get_config()` starts `OpenBLAS 0.3.21 ...`).
fn openblas_version(lib: &Loaded) -> Option<String> {
    let f = symbol(lib.0, "openblas_get_config")?;
    // SAFETY: OpenBLAS's `char* openblas_get_config(void)`.
    let f: GetConfig = unsafe { std::mem::transmute::<*mut c_void, GetConfig>(f) };
    // SAFETY: it returns a pointer to a static NUL-terminated string.
    let text = unsafe { CStr::from_ptr(f()) }
        .to_string_lossy()
        .into_owned();
    let mut words = text.split_whitespace();
    (words.next() == Some("OpenBLAS"))
        .then(|| words.next().map(str::to_string))
        .flatten()
}

fn openblas_threads(lib: &Loaded) -> Option<usize> {
    let f = symbol(lib.0, "openblas_get_num_threads")?;
    // SAFETY: OpenBLAS's `int openblas_get_num_threads(void)`.
    let f: GetThreads = unsafe { std::mem::transmute::<*mut c_void, GetThreads>(f) };
    // SAFETY: a plain query with no arguments.
    usize::try_from(unsafe { f() }).ok()
}

/// The library behind `cblas_sgemm` in this process (the one MLX calls).
fn cblas_library() -> Option<(PathBuf, Loaded)> {
    let sgemm = symbol(libc::RTLD_DEFAULT, "cblas_sgemm")?;
    let path = file_of(sgemm)?;
    let lib = Loaded::open(&path)?;
    Some((path, lib))
}

/// What to report as the BLAS in use: [`blas_info`] when MLX computes on
/// the CPU; on a GPU, BLAS takes no part in the model's products, and
/// naming the CPU library (often the slow reference one in a CUDA wheel)
/// would mislead.
pub fn blas_in_use() -> String {
    if matches!(crate::llm::dtype::default_device_is_cpu(), Ok(false)) {
        "not used (matrix products run on the GPU)".to_string()
    } else {
        blas_info().to_string()
    }
}

/// Finds the BLAS MLX's CPU matrix products run on in this process.
pub fn blas_info() -> BlasInfo {
    crate::status::init();
    let Some((opened, lib)) = cblas_library() else {
        return BlasInfo {
            kind: BlasKind::Unknown,
            version: None,
            threads: None,
            library: None,
        };
    };
    let library = std::fs::canonicalize(&opened).unwrap_or_else(|_| opened.clone());
    let name = opened
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let in_wheel_libs = opened
        .parent()
        .and_then(Path::extension)
        .is_some_and(|x| x == "libs");
    let (kind, version, threads) = if symbol(lib.0, "openblas_get_config").is_some() {
        (
            BlasKind::OpenBlas,
            openblas_version(&lib),
            openblas_threads(&lib),
        )
    } else if library.to_string_lossy().contains("Accelerate.framework")
        || library.to_string_lossy().contains("vecLib")
    {
        (BlasKind::Accelerate, None, None)
    } else if in_wheel_libs && name.starts_with("libblas-") {
        (BlasKind::Reference, None, None)
    } else {
        (BlasKind::Other, None, None)
    };
    BlasInfo {
        kind,
        version,
        threads,
        library: Some(library),
    }
}

/// The thread count BLAS should use: every core this process may run on.
pub(crate) fn wanted_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// True when the user set OpenBLAS's thread count through the environment.
fn threads_chosen_by_user() -> bool {
    [
        "OPENBLAS_NUM_THREADS",
        "GOTO_NUM_THREADS",
        "OMP_NUM_THREADS",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}

/// Sets OpenBLAS's thread count to [`wanted_threads`] (see the module
/// documentation); does nothing for other libraries or when the user chose
/// a count. Called once, before the first MLX call.
pub(crate) fn configure_threads() {
    if threads_chosen_by_user() {
        return;
    }
    let Some((_, lib)) = cblas_library() else {
        return;
    };
    let Some(f) = symbol(lib.0, "openblas_set_num_threads") else {
        return;
    };
    // SAFETY: OpenBLAS's `void openblas_set_num_threads(int)`.
    let f: SetThreads = unsafe { std::mem::transmute::<*mut c_void, SetThreads>(f) };
    let n = c_int::try_from(wanted_threads()).unwrap_or(c_int::MAX);
    // SAFETY: a positive count; OpenBLAS clamps it to its compiled maximum.
    unsafe { f(n) };
}

/// Ends the process with `code` at once, without running the C libraries'
/// exit handlers; flush what must be written first (this does not touch
/// stdout, whose lock another thread may hold, so it is safe in a signal
/// handler's thread).
///
/// OpenBLAS's pthread build can hang for ever in its exit handler
/// (`blas_thread_shutdown_` joining a worker thread that waits on a
/// condition variable; seen with OpenBLAS 0.3.21 on a loaded machine), so a
/// program that used MLX on Linux should leave through this rather than
/// `std::process::exit`. Nothing of this crate needs tearing down: memory
/// and threads go with the process.
pub fn exit(code: i32) -> ! {
    // SAFETY: `_exit` takes a plain status and ends the process at once; no
    // Rust state is used after it.
    unsafe { libc::_exit(code) }
}
