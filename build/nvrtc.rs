//! NVRTC through libloading: the build uses it (build/toolchain12.rs) and so does the run-time
//! fallback (src/runtime/jit.rs), which must work with whichever libnvrtc the user has (so.11, .12, .13)
//! and never panic when there is none. Every failure is a message.

use std::ffi::{CString, c_char, c_int, c_void};
use std::path::{Path, PathBuf};

/// What a compile returns.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// PTX text (the target was compute_XX).
    Ptx,
    /// A cubin (the target was sm_XX).
    #[allow(dead_code)] // (build.rs asks for PTX only)
    Cubin,
}

type NvrtcProgram = *mut c_void;

/// libnvrtc, opened for one compile.
pub struct Nvrtc {
    lib: libloading::Library,
    pub path: PathBuf,
}

impl Nvrtc {
    pub fn open(path: &Path) -> Result<Nvrtc, String> {
        // SAFETY: loading NVIDIA's NVRTC library runs no initialisers with preconditions.
        let lib = unsafe { libloading::Library::new(path) }
            .map_err(|e| format!("could not load {}: {e}", path.display()))?;
        Ok(Nvrtc {
            lib,
            path: path.to_path_buf(),
        })
    }

    fn symbol<F: Copy>(&self, name: &str) -> Result<F, String> {
        // SAFETY: each call site names the function's C signature from nvrtc.h.
        unsafe { self.lib.get::<F>(name.as_bytes()) }
            .map(|s| *s)
            .map_err(|e| format!("{} lacks {name}: {e}", self.path.display()))
    }

    pub fn version(&self) -> Result<(i32, i32), String> {
        let f: unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int =
            self.symbol("nvrtcVersion")?;
        let (mut major, mut minor) = (0, 0);
        // SAFETY: two valid out-pointers.
        let r = unsafe { f(&mut major, &mut minor) };
        if r != 0 {
            return Err(format!("nvrtcVersion failed ({r})"));
        }
        Ok((major, minor))
    }

    /// The virtual architectures this NVRTC compiles for (75, 80, ..., 90 for 12.0).
    #[allow(dead_code)] // (the run-time fallback asks for the GPU's own architecture)
    pub fn supported_archs(&self) -> Result<Vec<u32>, String> {
        let count: unsafe extern "C" fn(*mut c_int) -> c_int =
            self.symbol("nvrtcGetNumSupportedArchs")?;
        let list: unsafe extern "C" fn(*mut c_int) -> c_int =
            self.symbol("nvrtcGetSupportedArchs")?;
        let mut n: c_int = 0;
        // SAFETY: a valid out-pointer.
        if unsafe { count(&mut n) } != 0 || !(0..=1024).contains(&n) {
            return Err("nvrtcGetNumSupportedArchs failed".into());
        }
        let mut archs = vec![0 as c_int; n as usize];
        // SAFETY: room for the n architectures it said it has.
        if unsafe { list(archs.as_mut_ptr()) } != 0 {
            return Err("nvrtcGetSupportedArchs failed".into());
        }
        Ok(archs
            .into_iter()
            .filter_map(|a| u32::try_from(a).ok())
            .collect())
    }

    /// Compiles `source` (named `name` in messages) with `options`; the PTX text.
    #[allow(dead_code)] // (the run-time fallback asks for cubins only)
    pub fn compile_to_ptx(
        &self,
        source: &str,
        name: &str,
        options: &[String],
    ) -> Result<String, String> {
        let bytes = self.compile(source, name, options, Output::Ptx)?;
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        Ok(String::from_utf8_lossy(&bytes[..end]).into_owned())
    }

    /// Compiles `source` (named `name` in messages) with `options`; the PTX or the cubin.
    pub fn compile(
        &self,
        source: &str,
        name: &str,
        options: &[String],
        output: Output,
    ) -> Result<Vec<u8>, String> {
        type Create = unsafe extern "C" fn(
            *mut NvrtcProgram,
            *const c_char,
            *const c_char,
            c_int,
            *const *const c_char,
            *const *const c_char,
        ) -> c_int;
        type Compile = unsafe extern "C" fn(NvrtcProgram, c_int, *const *const c_char) -> c_int;
        type Size = unsafe extern "C" fn(NvrtcProgram, *mut usize) -> c_int;
        type Get = unsafe extern "C" fn(NvrtcProgram, *mut c_char) -> c_int;
        type Destroy = unsafe extern "C" fn(*mut NvrtcProgram) -> c_int;
        let create: Create = self.symbol("nvrtcCreateProgram")?;
        let compile: Compile = self.symbol("nvrtcCompileProgram")?;
        let log_size: Size = self.symbol("nvrtcGetProgramLogSize")?;
        let get_log: Get = self.symbol("nvrtcGetProgramLog")?;
        let (size_name, get_name) = match output {
            Output::Ptx => ("nvrtcGetPTXSize", "nvrtcGetPTX"),
            Output::Cubin => ("nvrtcGetCUBINSize", "nvrtcGetCUBIN"),
        };
        let out_size: Size = self.symbol(size_name)?;
        let get_out: Get = self.symbol(get_name)?;
        let destroy: Destroy = self.symbol("nvrtcDestroyProgram")?;

        let c = |s: &str| CString::new(s).map_err(|_| format!("NUL byte in {s:?}"));
        let source = c(source)?;
        let name = c(name)?;
        let options: Vec<CString> = options.iter().map(|o| c(o)).collect::<Result<_, _>>()?;
        let option_ptrs: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();

        let mut program: NvrtcProgram = std::ptr::null_mut();
        // SAFETY: valid NUL-terminated strings; no headers passed (count 0, null arrays).
        let r = unsafe {
            create(
                &mut program,
                source.as_ptr(),
                name.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        if r != 0 {
            return Err(format!("nvrtcCreateProgram failed ({r})"));
        }
        // SAFETY (this block): `program` is live until destroy below; buffers are sized by the
        // library's own size calls.
        let result = unsafe {
            let compiled = compile(program, option_ptrs.len() as c_int, option_ptrs.as_ptr());
            let read = |size: Size, get: Get| -> Result<Vec<u8>, String> {
                let mut n = 0usize;
                if size(program, &mut n) != 0 {
                    return Err("NVRTC could not size its output".into());
                }
                let mut buf = vec![0u8; n.max(1)];
                if get(program, buf.as_mut_ptr().cast()) != 0 {
                    return Err("NVRTC could not return its output".into());
                }
                buf.truncate(n);
                Ok(buf)
            };
            let log = read(log_size, get_log)
                .map(|b| {
                    String::from_utf8_lossy(&b)
                        .trim_end_matches('\0')
                        .to_string()
                })
                .unwrap_or_default();
            if compiled != 0 {
                let tail: Vec<&str> = log.lines().take(40).collect();
                Err(format!(
                    "NVRTC ({}) failed to compile the kernels ({compiled}):\n{}",
                    self.path.display(),
                    tail.join("\n")
                ))
            } else {
                read(out_size, get_out)
            }
        };
        // SAFETY: created above, destroyed once.
        unsafe { destroy(&mut program) };
        result
    }
}
