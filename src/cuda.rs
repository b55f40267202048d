//! The CUDA backend: a cudarc context and stream, the embedded image loaded once, and kernel
//! functions cached by name.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaStream, LaunchConfig, PushKernelArg,
};

use crate::error::{Error, Result};
use crate::image;
use crate::kernel::Launch;
use crate::planner::DeviceLimits;

struct CachedFunction {
    function: CudaFunction,
    /// The dynamic shared memory this function has been allowed so far. Raised explicitly for
    /// any size (not only past 48 KiB): the default 48 KiB limit counts static shared memory too.
    smem_allowed: u32,
}

pub(crate) struct CudaBackend {
    pub stream: Arc<CudaStream>,
    module: Arc<CudaModule>,
    functions: Mutex<HashMap<String, CachedFunction>>,
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

impl CudaBackend {
    /// Opens device `ordinal` on its default stream (no extra per-launch event work).
    pub fn open(ordinal: usize) -> Result<CudaBackend> {
        if image::FATBIN.is_none() {
            return Err(Error::NoCudaImage);
        }
        // Nothing below may reach a driver function the library lacks (cudarc would panic).
        crate::driver::check()?;
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
        let fatbin = image::FATBIN.ok_or(Error::NoCudaImage)?;
        crate::driver::check()?;
        let ctx = stream.context().clone();
        let attr = |a| {
            ctx.attribute(a)
                .map_err(|e| Error::driver("cuDeviceGetAttribute", e))
        };
        let cc = (
            attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
            attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
        );
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(fatbin.to_vec()))
            .map_err(|e| Error::ImageLoad {
                driver_version: driver_version(),
                compute_capability: cc,
                detail: format!("{e:?}"),
            })?;
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
            module,
            functions: Mutex::new(HashMap::new()),
            limits,
            name,
            compute_capability: cc,
        })
    }

    /// Looks `name` up in the loaded image once; later calls hit the cache.
    fn cached<'a>(
        functions: &'a mut HashMap<String, CachedFunction>,
        module: &Arc<CudaModule>,
        name: &str,
    ) -> Result<&'a mut CachedFunction> {
        if !functions.contains_key(name) {
            let function = module.load_function(name).map_err(|e| Error::Launch {
                kernel: name.to_string(),
                detail: format!("entry point missing from the image: {e:?}"),
            })?;
            functions.insert(
                name.to_string(),
                CachedFunction {
                    function,
                    smem_allowed: 0,
                },
            );
        }
        Ok(functions.get_mut(name).expect("inserted above"))
    }

    /// Resolves every named entry point now (instead of at first use).
    pub fn preload(&self, names: &[String]) -> Result<()> {
        let mut functions = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        for name in names {
            Self::cached(&mut functions, &self.module, name)?;
        }
        Ok(())
    }

    /// Enqueues the launch on the stream; does not wait for it.
    pub fn launch(&self, launch: &Launch) -> Result<()> {
        let name = launch.stage.kernel.name();
        let smem = launch.stage.shared_mem_bytes;
        let mut functions = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        let cached = Self::cached(&mut functions, &self.module, &name)?;
        if let Some(allow) = crate::kernel::dynamic_smem_to_allow(cached.smem_allowed, smem) {
            cached
                .function
                .set_attribute(
                    CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    allow as i32,
                )
                .map_err(|e| Error::Launch {
                    kernel: name.clone(),
                    detail: format!("cannot allow {allow} bytes of dynamic shared memory: {e:?}"),
                })?;
            cached.smem_allowed = allow;
        }
        let cfg = LaunchConfig {
            grid_dim: (launch.stage.grid.0, launch.stage.grid.1, 1),
            block_dim: (launch.stage.block, 1, 1),
            shared_mem_bytes: smem,
        };
        let mut builder = self.stream.launch_builder(&cached.function);
        builder.arg(&launch.params);
        // SAFETY: the parameter block matches the kernel signature (one SoftmaxParams by value);
        // the op validated that both tensors hold rows * cols elements at these addresses.
        unsafe { builder.launch(cfg) }.map_err(|e| Error::Launch {
            kernel: name,
            detail: format!("{e:?}"),
        })?;
        Ok(())
    }
}
