//! The CUDA backend: a cudarc context and stream, the embedded image loaded once per CUDA context
//! (shared by every `Device` on that context, whichever stream it uses), and kernel functions
//! cached in one slot per entry point (by `KernelConfig::index`): resolved once, then read
//! without locks, lookups or name formatting.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaStream, LaunchConfig, PushKernelArg,
};

use crate::planning::{DeviceLimits, KernelConfig, Stage};
use crate::runtime::image;
use crate::runtime::launch::{KernelParams, Launch, entry_point, name_str};
use crate::types::error::{Error, Result};

/// One entry point's cached state.
#[derive(Default)]
struct FunctionSlot {
    /// Resolved in the loaded image on first use (or by `preload`).
    function: OnceLock<CudaFunction>,
    /// The dynamic shared memory this function has been allowed so far. Raised explicitly for
    /// any size (not only past 48 KiB): the default 48 KiB limit counts static shared memory too.
    smem_allowed: AtomicU32,
}

/// What every backend on one CUDA context shares: the loaded image and its resolved functions.
/// A function handle and its shared memory attribute belong to the module, not to a stream, so
/// backends on different streams of one context can share them.
struct ContextModule {
    /// Keeps the context alive too (a `CudaModule` holds its `CudaContext`), so that the cache
    /// key (the raw `CUcontext`) cannot be reused by another context while this entry lives.
    module: Arc<CudaModule>,
    /// `KernelConfig::COUNT` slots, by `KernelConfig::index`.
    functions: Box<[FunctionSlot]>,
    /// Held while a function's dynamic shared memory attribute is raised (rare: the first
    /// launch that needs more), so that two threads raising it at once cannot leave the
    /// attribute below what the slot records.
    smem_raise: Mutex<()>,
}

/// The modules loaded so far, by raw `CUcontext`. Weak: the module (and, through it, the
/// context) is released when the last backend on the context goes; a later backend loads it
/// again. Locked only while a backend is made, never on the launch path.
static MODULES: Mutex<Vec<(usize, Weak<ContextModule>)>> = Mutex::new(Vec::new());

/// Images loaded so far in this process (see `module_loads`).
static MODULE_LOADS: AtomicU64 = AtomicU64::new(0);

/// How many times this process has loaded the GPU image into a context: once per context while
/// a `Device` on it lives, however many `Device`s (streams) use it. For tests.
pub(crate) fn module_loads() -> u64 {
    MODULE_LOADS.load(Ordering::Relaxed)
}

/// The shared module of `ctx`: the cached one while any backend on the context holds it, else a
/// freshly loaded one (then cached).
fn context_module(
    ctx: &Arc<CudaContext>,
    compute_capability: (i32, i32),
) -> Result<Arc<ContextModule>> {
    let key = ctx.cu_ctx() as usize;
    // Held across the load, so that two threads opening the same context load it once.
    let mut modules = MODULES.lock().unwrap_or_else(|e| e.into_inner());
    modules.retain(|(_, weak)| weak.strong_count() > 0);
    if let Some(shared) = modules
        .iter()
        .find(|(k, _)| *k == key)
        .and_then(|(_, weak)| weak.upgrade())
    {
        return Ok(shared);
    }
    let module = load_image(ctx, compute_capability)?;
    MODULE_LOADS.fetch_add(1, Ordering::Relaxed);
    let shared = Arc::new(ContextModule {
        module,
        functions: (0..KernelConfig::COUNT)
            .map(|_| FunctionSlot::default())
            .collect(),
        smem_raise: Mutex::new(()),
    });
    modules.push((key, Arc::downgrade(&shared)));
    Ok(shared)
}

pub(crate) struct CudaBackend {
    pub stream: Arc<CudaStream>,
    /// Shared with every backend on the same context.
    shared: Arc<ContextModule>,
    pub limits: DeviceLimits,
    pub name: String,
    pub compute_capability: (i32, i32),
}

pub(crate) fn driver_version() -> i32 {
    let mut v = 0;
    // SAFETY: only called after the driver library was checked and initialised.
    let _ = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
    v
}

/// Loads the GPU image into `ctx`: the one place that turns "this context" into a module. When
/// the driver refuses the embedded image (its PTX is newer than the driver and it has no SASS
/// for this GPU), or CUDA_SOFTMAX_FORCE_JIT=1: the kernels compiled for this GPU by the user's
/// NVRTC (src/runtime/jit.rs), else an error naming both failures.
fn load_image(ctx: &Arc<CudaContext>, cc: (i32, i32)) -> Result<Arc<CudaModule>> {
    let refused = if crate::runtime::jit::forced() {
        format!("{}=1", crate::runtime::jit::FORCE_VAR)
    } else {
        match ctx.load_module(cudarc::nvrtc::Ptx::from_binary(image::fatbin()?)) {
            Ok(module) => return Ok(module),
            Err(e) => format!("{e:?}"),
        }
    };
    let failed = |detail: String| Error::ImageLoad {
        driver_version: driver_version(),
        compute_capability: cc,
        detail,
    };
    let cubin = crate::runtime::jit::cubin_for(cc)
        .map_err(|why| failed(format!("{refused}; run-time fallback: {why}")))?;
    ctx.load_module(cudarc::nvrtc::Ptx::from_binary(cubin))
        .map_err(|e| {
            failed(format!(
                "{refused}; the cubin NVRTC compiled for this GPU did not load either: {e:?}"
            ))
        })
}

impl CudaBackend {
    /// Opens device `ordinal` on its default stream (no extra per-launch event work).
    pub fn open(ordinal: usize) -> Result<CudaBackend> {
        if !image::has_image() {
            return Err(Error::NoCudaImage);
        }
        // Nothing below may reach a driver function the library lacks (cudarc would panic).
        crate::runtime::driver::check()?;
        match cudarc::driver::result::init() {
            Ok(()) => {}
            Err(e) if e.0 == cudarc::driver::sys::cudaError_enum::CUDA_ERROR_NO_DEVICE => {
                return Err(Error::NoGpu);
            }
            Err(e) => return Err(Error::driver("cuInit", e)),
        }
        let count =
            CudaContext::device_count().map_err(|e| Error::driver("cuDeviceGetCount", e))?;
        let count = count.max(0) as usize;
        if count == 0 {
            return Err(Error::NoGpu);
        }
        if ordinal >= count {
            return Err(Error::NoSuchDevice { ordinal, count });
        }
        let ctx =
            CudaContext::new(ordinal).map_err(|e| Error::driver("cuDevicePrimaryCtxRetain", e))?;
        // Our allocations never cross streams, so per-allocation events are pure overhead.
        // SAFETY: called before this context allocates anything.
        unsafe { ctx.disable_event_tracking() };
        Self::on_stream(ctx.default_stream())
    }

    /// Uses a stream the caller already has (and its context).
    pub fn on_stream(stream: Arc<CudaStream>) -> Result<CudaBackend> {
        if !image::has_image() {
            return Err(Error::NoCudaImage);
        }
        crate::runtime::driver::check()?;
        let ctx = stream.context().clone();
        let attr = |a| {
            ctx.attribute(a)
                .map_err(|e| Error::driver("cuDeviceGetAttribute", e))
        };
        let cc = (
            attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
            attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
        );
        let shared = context_module(&ctx, cc)?;
        let limits = DeviceLimits {
            sm_count: attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?.max(1)
                as u32,
            max_shared_mem_per_block: attr(
                CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )?
            .max(0) as u32,
        };
        let name = ctx.name().unwrap_or_else(|_| "unknown CUDA device".into());
        Ok(CudaBackend {
            stream,
            shared,
            limits,
            name,
            compute_capability: cc,
        })
    }

    /// True when both backends use the same loaded module (the same CUDA context).
    pub fn shares_module_with(&self, other: &CudaBackend) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// The function of entry point `index` (named `name`), resolved in the image on first use.
    fn function(&self, index: usize, name: &std::ffi::CStr) -> Result<&FunctionSlot> {
        let slot = self
            .shared
            .functions
            .get(index)
            .ok_or_else(|| Error::Launch {
                kernel: name_str(name).into(),
                detail: "no function slot for this entry point".into(),
            })?;
        if slot.function.get().is_none() {
            let function = self
                .shared
                .module
                .load_function(name_str(name))
                .map_err(|e| Error::Launch {
                    kernel: name_str(name).into(),
                    detail: format!("entry point missing from the image: {e:?}"),
                })?;
            // Another thread may have resolved it meanwhile: either handle is the same function.
            slot.function.get_or_init(|| function);
        }
        Ok(slot)
    }

    /// Resolves every entry point the planner can choose now (instead of at first use).
    pub fn preload(&self) -> Result<usize> {
        for kernel in KernelConfig::all() {
            let (index, name) = entry_point(&kernel)?;
            self.function(index, name)?;
        }
        Ok(KernelConfig::entry_names().len())
    }

    /// Enqueues the operation's stages on the stream, in order; does not wait for them.
    pub fn launch(&self, launch: &Launch<'_>) -> Result<()> {
        launch
            .stages
            .iter()
            .try_for_each(|stage| self.launch_stage(stage, &launch.params))
    }

    fn launch_stage(&self, stage: &Stage, params: &KernelParams) -> Result<()> {
        let (index, name) = entry_point(&stage.kernel)?;
        let slot = self.function(index, name)?;
        let Some(function) = slot.function.get() else {
            // `function` resolved it or returned an error.
            return Err(Error::Launch {
                kernel: name_str(name).into(),
                detail: "entry point not resolved".into(),
            });
        };
        let smem = stage.shared_mem_bytes;
        let allowed = slot.smem_allowed.load(Ordering::Acquire);
        if crate::runtime::launch::dynamic_smem_to_allow(allowed, smem).is_some() {
            let _raising = self
                .shared
                .smem_raise
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let allowed = slot.smem_allowed.load(Ordering::Acquire);
            if let Some(allow) = crate::runtime::launch::dynamic_smem_to_allow(allowed, smem) {
                function
                    .set_attribute(
                        CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        allow as i32,
                    )
                    .map_err(|e| Error::Launch {
                        kernel: name_str(name).into(),
                        detail: format!(
                            "cannot allow {allow} bytes of dynamic shared memory: {e:?}"
                        ),
                    })?;
                slot.smem_allowed.store(allow, Ordering::Release);
            }
        }
        let cfg = LaunchConfig {
            grid_dim: (stage.grid.0, stage.grid.1, 1),
            block_dim: (stage.block, 1, 1),
            shared_mem_bytes: smem,
        };
        let mut builder = self.stream.launch_builder(function);
        match params {
            KernelParams::Softmax(p) => builder.arg(p),
            KernelParams::CrossEntropy(p) => builder.arg(p),
        };
        // SAFETY: the parameter block matches the kernel signature (one block by value, of the
        // type the kernel declares: Device::launch checked it with KernelParams::check_fits);
        // the op validated that both tensors hold rows * cols elements at these addresses, and
        // the split-row workspace holds the plan's workspace_floats.
        unsafe { builder.launch(cfg) }.map_err(|e| Error::Launch {
            kernel: name_str(name).into(),
            detail: format!("{e:?}"),
        })?;
        Ok(())
    }
}
