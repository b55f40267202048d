//! The default image's toolchain, for drivers >= 525: NVRTC 12.0 compiles the kernels to PTX
//! (ISA 8.0, the newest a CUDA 12.0 driver can JIT), ptxas 12.9 assembles that PTX into SASS for
//! each architecture, and nvFatbin 12.9 packs the SASS and the PTX into one fatbin.
//! scripts/install-nvcc.sh installs the four pinned PyPI wheels that hold them (no CUDA 12 nvcc
//! is on PyPI, so build.rs drives the two libraries itself, through libloading).
//!
//! Nothing here panics: every failure is a message for `cargo::error`.

use std::ffi::{CString, OsString, c_char, c_int, c_void};

use super::cache_paths::user_cache;
use super::nvrtc::Nvrtc;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The pinned 12.x toolchain's files, inside the folder install-nvcc.sh fills.
pub struct Toolchain12 {
    pub root: PathBuf,
    pub nvrtc: PathBuf,
    pub nvfatbin: PathBuf,
    pub ptxas: PathBuf,
    pub include: PathBuf,
}

impl Toolchain12 {
    /// The toolchain in `root` (the folder holding `nvidia/`), when all four parts are there.
    pub fn at(root: &Path) -> Option<Toolchain12> {
        let nv = root.join("nvidia");
        let t = Toolchain12 {
            root: root.to_path_buf(),
            nvrtc: nv.join("cuda_nvrtc/lib/libnvrtc.so.12"),
            nvfatbin: nv.join("nvfatbin/lib/libnvfatbin.so.12"),
            ptxas: nv.join("cuda_nvcc/bin/ptxas"),
            include: nv.join("cuda_runtime/include"),
        };
        let complete = t.nvrtc.is_file()
            && t.nvfatbin.is_file()
            && t.ptxas.is_file()
            && t.include.join("cuda_fp16.h").is_file();
        complete.then_some(t)
    }

    /// Where install-nvcc.sh put it: CUDA_SOFTMAX_CU12_DIR, else the user's cache folder.
    pub fn find(lookup: &dyn Fn(&str) -> Option<OsString>) -> Option<Toolchain12> {
        let root = lookup("CUDA_SOFTMAX_CU12_DIR")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| Some(user_cache(lookup)?.join("cuda-softmax/cuda-12-nvrtc")))?;
        Toolchain12::at(&root)
    }

    /// "NVRTC a.b, ptxas c.d": what the image was built with (part of the cache key too).
    pub fn describe(&self) -> Result<String, String> {
        let nvrtc = Nvrtc::open(&self.nvrtc)?;
        let (major, minor) = nvrtc.version()?;
        let out = Command::new(&self.ptxas)
            .arg("--version")
            .output()
            .map_err(|e| format!("could not run {}: {e}", self.ptxas.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let ptxas = text
            .split("release ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .ok_or_else(|| format!("{} --version names no release", self.ptxas.display()))?;
        Ok(format!("NVRTC {major}.{minor}, ptxas {ptxas}"))
    }
}

/// One fatbin from cubins and PTX, with nvFatbin.
pub fn fatbin(
    library: &Path,
    cubins: &[(String, Vec<u8>)],
    ptx: (u32, &str),
) -> Result<Vec<u8>, String> {
    // SAFETY: loading NVIDIA's nvFatbin library runs no initialisers with preconditions.
    let lib = unsafe { libloading::Library::new(library) }
        .map_err(|e| format!("could not load {}: {e}", library.display()))?;
    type Handle = *mut c_void;
    type Create = unsafe extern "C" fn(*mut Handle, *const *const c_char, usize) -> c_int;
    type AddCubin =
        unsafe extern "C" fn(Handle, *const c_void, usize, *const c_char, *const c_char) -> c_int;
    type AddPtx = unsafe extern "C" fn(
        Handle,
        *const c_char,
        usize,
        *const c_char,
        *const c_char,
        *const c_char,
    ) -> c_int;
    type Size = unsafe extern "C" fn(Handle, *mut usize) -> c_int;
    type Get = unsafe extern "C" fn(Handle, *mut c_void) -> c_int;
    type Destroy = unsafe extern "C" fn(*mut Handle) -> c_int;
    let sym = |name: &str| -> Result<*const c_void, String> {
        // SAFETY: only used as the C signatures of nvFatbin.h below.
        unsafe { lib.get::<*const c_void>(name.as_bytes()) }
            .map(|s| *s)
            .map_err(|e| format!("{} lacks {name}: {e}", library.display()))
    };
    // SAFETY (this block): the transmutes give each symbol its nvFatbin.h signature; every
    // buffer passed lives across the call that reads it; the handle is destroyed once.
    unsafe {
        let create: Create = std::mem::transmute(sym("nvFatbinCreate")?);
        let add_cubin: AddCubin = std::mem::transmute(sym("nvFatbinAddCubin")?);
        let add_ptx: AddPtx = std::mem::transmute(sym("nvFatbinAddPTX")?);
        let size: Size = std::mem::transmute(sym("nvFatbinSize")?);
        let get: Get = std::mem::transmute(sym("nvFatbinGet")?);
        let destroy: Destroy = std::mem::transmute(sym("nvFatbinDestroy")?);
        // Not compressed: build.rs compresses the whole image with zstd, far smaller than any
        // fatbin compression a 525 driver reads (and the driver gets the inflated fatbin).
        let options = [CString::new("-compress=false").expect("no NUL")];
        let option_ptrs: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();
        let mut handle: Handle = std::ptr::null_mut();
        let r = create(&mut handle, option_ptrs.as_ptr(), option_ptrs.len());
        if r != 0 {
            return Err(format!("nvFatbinCreate failed ({r})"));
        }
        let result = (|| {
            for (arch, cubin) in cubins {
                let a = CString::new(arch.as_str()).map_err(|_| "NUL in an architecture")?;
                let id = CString::new(format!("cuda_softmax_sm_{arch}")).expect("no NUL");
                let r = add_cubin(
                    handle,
                    cubin.as_ptr().cast(),
                    cubin.len(),
                    a.as_ptr(),
                    id.as_ptr(),
                );
                if r != 0 {
                    return Err(format!("nvFatbinAddCubin (sm_{arch}) failed ({r})"));
                }
            }
            let (arch, text) = ptx;
            let code = CString::new(text).map_err(|_| "NUL byte in the PTX".to_string())?;
            let a = CString::new(arch.to_string()).expect("digits");
            let id = CString::new(format!("cuda_softmax_compute_{arch}")).expect("no NUL");
            let no_options = CString::new("").expect("empty");
            let r = add_ptx(
                handle,
                code.as_ptr(),
                code.as_bytes_with_nul().len(),
                a.as_ptr(),
                id.as_ptr(),
                no_options.as_ptr(),
            );
            if r != 0 {
                return Err(format!("nvFatbinAddPTX (compute_{arch}) failed ({r})"));
            }
            let mut n = 0usize;
            if size(handle, &mut n) != 0 || n == 0 {
                return Err("nvFatbinSize failed".into());
            }
            let mut out = vec![0u8; n];
            if get(handle, out.as_mut_ptr().cast()) != 0 {
                return Err("nvFatbinGet failed".into());
            }
            Ok(out)
        })();
        destroy(&mut handle);
        result
    }
}
