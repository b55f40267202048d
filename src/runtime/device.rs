//! `Device`: where tensors live and kernels run. Either a CUDA GPU (through cudarc) or the CPU
//! SIMT emulator, behind one API; the same planner and kernel names serve both.

use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};

use crate::planning::{DeviceLimits, KernelConfig, Stage, check_shared_memory};
use crate::runtime::cuda::CudaBackend;
use crate::runtime::emulator::{
    EMULATOR_LIMITS, Emulator, EmulatorConfig, HostBuffer, LaunchStats,
};
use crate::runtime::launch::{AccessRange, KernelParams, Launch};
use crate::types::element::TensorElement;
use crate::types::error::{Error, Result};

pub(crate) enum Backend {
    Cuda(CudaBackend),
    Emulator(Emulator),
}

/// A handle to a device; cheap to clone (clones share the context, stream and loaded kernels).
#[derive(Clone)]
pub struct Device {
    pub(crate) backend: Arc<Backend>,
    /// The split-row workspace, shared by clones.
    workspace: Arc<Mutex<Workspace>>,
}

/// Scratch memory of the split-row kernels (per-chunk (max, sum) states): kept for the device's
/// lifetime, grown when a call needs more, reused otherwise. Locked from before a launch takes
/// its address until the launches that use it are enqueued (on the emulator, under the stream
/// lock, so they have also completed): two operations never share it at once, and a buffer the
/// workspace outgrows is freed in stream order, after every launch already enqueued on it.
#[derive(Default)]
struct Workspace {
    buffer: Option<Buffer<f32>>,
    /// f32 elements `buffer` holds.
    capacity: usize,
    /// Buffers allocated so far (a debugging counter for tests).
    allocations: u64,
}

/// Access ranges one operation may pass to `Device::launch` (the workspace's is added to them).
const MAX_RANGES: usize = 10;

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Device({})", self.name())
    }
}

/// Device memory behind one or more tensors (views share it).
pub(crate) enum Buffer<T> {
    Cuda(CudaSlice<T>),
    Host(HostBuffer),
    /// Memory the caller owns (a cudarc view, a raw device pointer, or host memory standing in
    /// for device memory on the emulator). Only `TensorRef`/`TensorMut` make tensors over it,
    /// and no owning tensor can be derived from those (see `crate::types::borrow`).
    Borrowed(Borrowed),
}

/// Caller memory a borrowed tensor works on in place.
pub(crate) struct Borrowed {
    /// Address of element 0 in the device's address space.
    pub addr: u64,
    /// What keeps the memory's CUDA context alive for the borrow's lifetime (the view's stream;
    /// `None` for raw pointers and the emulator, where the caller's obligations cover it).
    pub _context: Option<Arc<CudaStream>>,
}

impl<T> Buffer<T> {
    /// Address of element 0 in the device's address space.
    pub fn base_addr(&self) -> u64 {
        match self {
            Buffer::Cuda(s) => {
                let (ptr, _sync) = s.device_ptr(s.stream());
                ptr
            }
            Buffer::Host(memory) => memory.addr(),
            Buffer::Borrowed(b) => b.addr,
        }
    }

    /// True for caller memory (see `Buffer::Borrowed`).
    pub fn is_borrowed(&self) -> bool {
        matches!(self, Buffer::Borrowed(_))
    }
}

impl Device {
    /// Opens CUDA device `ordinal` on its default stream. Errors (never panics) when the crate
    /// was built without nvcc, the driver is missing or too old, there is no GPU, or the ordinal
    /// is out of range; each error says what to do.
    pub fn cuda(ordinal: usize) -> Result<Device> {
        Ok(Device::with_backend(Backend::Cuda(CudaBackend::open(
            ordinal,
        )?)))
    }

    /// Uses a cudarc stream the caller already owns: operations are enqueued on it, and
    /// `CudaSlice`s from its context can be wrapped with `DeviceTensor::from_cuda_slice`.
    pub fn cuda_on_stream(stream: Arc<CudaStream>) -> Result<Device> {
        Ok(Device::with_backend(Backend::Cuda(CudaBackend::on_stream(
            stream,
        )?)))
    }

    /// The CPU SIMT emulator with default settings (forward schedule, one worker per core).
    pub fn emulator() -> Device {
        Device::emulator_with(EmulatorConfig::default())
    }

    /// The CPU SIMT emulator with a chosen thread schedule and worker count.
    pub fn emulator_with(config: EmulatorConfig) -> Device {
        Device::with_backend(Backend::Emulator(Emulator::new(config)))
    }

    fn with_backend(backend: Backend) -> Device {
        Device {
            backend: Arc::new(backend),
            workspace: Arc::default(),
        }
    }

    /// True for the CPU SIMT emulator.
    pub fn is_emulator(&self) -> bool {
        matches!(*self.backend, Backend::Emulator(_))
    }

    /// A human-readable name: the GPU's name and architecture, or the emulator and its schedule.
    pub fn name(&self) -> String {
        match &*self.backend {
            Backend::Cuda(c) => format!(
                "{} (sm_{}{})",
                c.name, c.compute_capability.0, c.compute_capability.1
            ),
            Backend::Emulator(e) => format!("CPU SIMT emulator ({:?} schedule)", e.config.schedule),
        }
    }

    /// What the planner sees of this device (the tools' view: crate feature `tools`).
    #[cfg(feature = "tools")]
    #[doc(hidden)]
    pub fn limits(&self) -> DeviceLimits {
        self.planner_limits()
    }

    /// What the planner sees of this device.
    pub(crate) fn planner_limits(&self) -> DeviceLimits {
        match &*self.backend {
            Backend::Cuda(c) => c.limits,
            Backend::Emulator(_) => EMULATOR_LIMITS,
        }
    }

    /// Waits for all work enqueued on this device's stream (a no-op on the emulator, whose
    /// launches complete before they return).
    pub fn synchronize(&self) -> Result<()> {
        match &*self.backend {
            Backend::Cuda(c) => c
                .stream
                .synchronize()
                .map_err(|e| Error::driver("cuStreamSynchronize", e)),
            Backend::Emulator(_) => Ok(()),
        }
    }

    /// Runs `f` while holding the emulator's stream, so that it is ordered with every other
    /// operation of the device (on a GPU, `f` just runs: its copies are stream-ordered already).
    pub(crate) fn on_emulator_stream<R>(&self, f: impl FnOnce() -> R) -> R {
        match &*self.backend {
            Backend::Emulator(e) => {
                let _stream = e.stream();
                f()
            }
            Backend::Cuda(_) => f(),
        }
    }

    /// Global-memory traffic of the last launch on an emulator device (`None` on a GPU).
    pub fn last_launch_stats(&self) -> Option<LaunchStats> {
        match &*self.backend {
            Backend::Emulator(e) => e.last_stats(),
            Backend::Cuda(_) => None,
        }
    }

    /// The cudarc stream operations run on (`None` on the emulator).
    pub fn cuda_stream(&self) -> Option<&Arc<CudaStream>> {
        match &*self.backend {
            Backend::Cuda(c) => Some(&c.stream),
            Backend::Emulator(_) => None,
        }
    }

    /// True when both handles refer to the same opened device.
    pub fn same_as(&self, other: &Device) -> bool {
        Arc::ptr_eq(&self.backend, &other.backend)
    }

    /// True when both are CUDA devices on one context and so share one loaded image and its
    /// resolved functions (the image is loaded once per context, not once per `Device`).
    pub fn shares_module_with(&self, other: &Device) -> bool {
        match (&*self.backend, &*other.backend) {
            (Backend::Cuda(a), Backend::Cuda(b)) => a.shares_module_with(b),
            _ => false,
        }
    }

    /// How many times this process has loaded the GPU image into a CUDA context (once per
    /// context while a `Device` on it lives). For tests and diagnostics.
    #[doc(hidden)]
    pub fn cuda_module_loads() -> u64 {
        crate::runtime::cuda::module_loads()
    }

    /// Resolves every kernel entry point the planner can choose, so that a broken or partial
    /// image fails here rather than at a first launch, and first launches pay no lookup.
    /// Returns how many entry points were checked.
    pub fn preload_kernels(&self) -> Result<usize> {
        match &*self.backend {
            Backend::Cuda(c) => c.preload(),
            Backend::Emulator(_) => {
                let names = KernelConfig::entry_names();
                let available = crate::runtime::emulator::emulator_kernel_names();
                if let Some(missing) = names.iter().find(|n| !available.contains(n)) {
                    return Err(Error::Launch {
                        kernel: missing.clone(),
                        detail: "entry point missing from the emulator image".into(),
                    });
                }
                Ok(names.len())
            }
        }
    }

    /// Allocates `len` elements (at least one, so that every buffer has a real address), zeroed
    /// when asked: a memset on the stream on a GPU. Uninitialised emulator memory is filled with
    /// `T::poison()`, so that an element no kernel wrote never passes for a result.
    pub(crate) fn alloc<T: TensorElement>(&self, len: usize, zeroed: bool) -> Result<Buffer<T>> {
        match &*self.backend {
            Backend::Cuda(c) => {
                let slice = if zeroed {
                    c.stream.alloc_zeros::<T>(len.max(1))
                } else {
                    // SAFETY: any bit pattern is a valid f32/f16/bf16/i32/i64.
                    unsafe { c.stream.alloc::<T>(len.max(1)) }
                };
                slice
                    .map(Buffer::Cuda)
                    .map_err(|e| Error::driver("cuMemAlloc", e))
            }
            Backend::Emulator(_) => {
                // element_count() guarantees the byte size fits.
                let buffer = if zeroed {
                    HostBuffer::zeroed(len * size_of::<T>())?
                } else {
                    HostBuffer::filled(len, T::poison())?
                };
                Ok(Buffer::Host(buffer))
            }
        }
    }

    /// Runs the stages of one operation in order on this device's stream, with `params` and
    /// the memory `ranges` they may touch. When `workspace_floats` is not 0 the stages share the
    /// device's split-row workspace (at least that many f32 elements): its address goes into
    /// `params`' workspace field and its range joins `ranges`. The block must be the one every
    /// stage's kernel declares (an error otherwise). A repeated call formats no name, looks
    /// nothing up by name and allocates nothing here.
    pub(crate) fn launch(
        &self,
        stages: &[Stage],
        params: impl Into<KernelParams>,
        ranges: &[AccessRange],
        workspace_floats: usize,
    ) -> Result<()> {
        let mut params = params.into();
        params.check_fits(stages)?;
        // The planners' invariant, checked before anything is enqueued: a plan whose blocks do
        // not fit the device's shared memory is a planner bug, reported as an error.
        if let Err((kernel, detail)) = check_shared_memory(stages, &self.planner_limits()) {
            return Err(Error::Launch {
                kernel: kernel.name(),
                detail: format!("{detail} (a planner bug: please report the shape and dtype)"),
            });
        }
        match &*self.backend {
            Backend::Cuda(c) => {
                if workspace_floats == 0 {
                    return c.launch(&Launch {
                        stages,
                        params,
                        ranges,
                    });
                }
                let mut workspace = self.workspace.lock().unwrap_or_else(|e| e.into_inner());
                params.base_mut().workspace =
                    self.reserve_workspace(&mut workspace, workspace_floats)?;
                // Enqueued before the lock is released: a later call that grows the workspace
                // frees this buffer on the stream, after these launches.
                c.launch(&Launch {
                    stages,
                    params,
                    ranges,
                })
            }
            Backend::Emulator(e) => {
                let stream = e.stream();
                if workspace_floats == 0 {
                    return e.launch(
                        &stream,
                        &Launch {
                            stages,
                            params,
                            ranges,
                        },
                    );
                }
                let mut workspace = self.workspace.lock().unwrap_or_else(|e| e.into_inner());
                let addr = self.reserve_workspace(&mut workspace, workspace_floats)?;
                if let Some(Buffer::Host(memory)) = &workspace.buffer {
                    // What an earlier call left there must not pass for this call's states.
                    poison_floats(memory, workspace_floats);
                }
                let mut all = [AccessRange::default(); MAX_RANGES + 1];
                let Some(slots) = all.get_mut(..ranges.len()) else {
                    return Err(Error::Launch {
                        kernel: "split-row".into(),
                        detail: format!("more than {MAX_RANGES} access ranges"),
                    });
                };
                slots.copy_from_slice(ranges);
                all[ranges.len()] = AccessRange {
                    addr,
                    bytes: (workspace_floats * size_of::<f32>()) as u64,
                    writable: true,
                };
                params.base_mut().workspace = addr;
                e.launch(
                    &stream,
                    &Launch {
                        stages,
                        params,
                        ranges: &all[..=ranges.len()],
                    },
                )
            }
        }
    }

    /// Makes the workspace hold at least `floats` f32 elements (allocating only when it holds
    /// fewer) and returns its address.
    fn reserve_workspace(&self, workspace: &mut Workspace, floats: usize) -> Result<u64> {
        if let Some(buffer) = &workspace.buffer
            && workspace.capacity >= floats
        {
            return Ok(buffer.base_addr());
        }
        // Exactly what the call needs: split-row plans need at most a few floats per SM, so the
        // workspace grows a few times at most over the device's life.
        let capacity = floats;
        // The old buffer is dropped first: freed in stream order on a GPU.
        workspace.buffer = None;
        workspace.capacity = 0;
        let buffer = self.alloc::<f32>(capacity, false)?;
        let addr = buffer.base_addr();
        workspace.buffer = Some(buffer);
        workspace.capacity = capacity;
        workspace.allocations += 1;
        Ok(addr)
    }

    /// How many split-row workspace buffers this device has allocated so far. Calls whose
    /// workspace fits the one it has reuse it, so repeated calls leave this unchanged. For tests.
    #[doc(hidden)]
    pub fn split_workspace_allocations(&self) -> u64 {
        self.workspace
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allocations
    }

    /// f32 elements the split-row workspace holds now (0 before the first split-row call).
    #[doc(hidden)]
    pub fn split_workspace_capacity(&self) -> usize {
        self.workspace
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .capacity
    }

    /// Test hook for the emulator: later launches run only the blocks whose linear index
    /// (x + y * grid x) is at least `first_block`, so that a test can reach far rows of a huge
    /// tensor without computing the near ones. 0 runs every block (the default).
    #[doc(hidden)]
    pub fn emulator_skip_blocks_before(&self, first_block: u64) {
        if let Backend::Emulator(e) = &*self.backend {
            e.first_block
                .store(first_block, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Runs one of the emulator's planted-bug kernels (kernels/emu/selftest.cu) as a single
    /// block of `threads` threads writing `y`. For the emulator's own tests.
    #[doc(hidden)]
    pub fn emulator_selftest(
        &self,
        kernel: &str,
        threads: u32,
        dynamic_smem: u32,
        y: &mut crate::DeviceTensor<f32>,
    ) -> Result<()> {
        let Backend::Emulator(e) = &*self.backend else {
            return Err(Error::Launch {
                kernel: kernel.into(),
                detail: "self-test kernels exist only on the emulator".into(),
            });
        };
        let params = crate::runtime::launch::SoftmaxParams {
            y: y.addr(),
            rows: 1,
            cols: y.len() as i64,
            ..Default::default()
        };
        let ranges = [y.access_range(true)];
        let name = std::ffi::CString::new(kernel).map_err(|_| Error::Launch {
            kernel: kernel.into(),
            detail: "kernel name contains a NUL byte".into(),
        })?;
        let _stream = e.stream();
        let stats = e.run(
            &name,
            None,
            [1, 1, threads, dynamic_smem],
            &params.into(),
            &ranges,
        )?;
        e.record(stats);
        Ok(())
    }
}

/// Fills the first `floats` f32 elements of `memory` with the poison of uninitialised memory.
/// The caller holds the emulator's stream and keeps `floats` within the buffer.
fn poison_floats(memory: &HostBuffer, floats: usize) {
    let poison = [f32::poison(); 256];
    let mut done = 0;
    while done < floats {
        let n = (floats - done).min(poison.len());
        // SAFETY: in range per the caller; the stream lock keeps every kernel away meanwhile.
        unsafe {
            memory.write(
                done * size_of::<f32>(),
                poison.as_ptr() as *const u8,
                n * size_of::<f32>(),
            )
        };
        done += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The workspace is reused while it holds enough (same address), grown when a call needs
    /// more, and only then allocated again.
    #[test]
    fn workspace_grows_only_when_a_call_needs_more() {
        let device = Device::emulator();
        let reserve = |floats| {
            let mut workspace = device.workspace.lock().unwrap();
            device.reserve_workspace(&mut workspace, floats).unwrap()
        };
        let first = reserve(100);
        assert_eq!(reserve(100), first);
        assert_eq!(reserve(10), first);
        assert_eq!(device.split_workspace_allocations(), 1);
        assert_eq!(device.split_workspace_capacity(), 100);
        let grown = reserve(5000);
        assert_eq!(device.split_workspace_allocations(), 2);
        assert_eq!(device.split_workspace_capacity(), 5000);
        assert_eq!(reserve(4999), grown);
        assert_eq!(reserve(1), grown);
        assert_eq!(device.clone().split_workspace_allocations(), 2);
    }
}
