//! `Device`: where tensors live and kernels run. Either a CUDA GPU (through cudarc) or the CPU
//! SIMT emulator, behind one API; the same planner and kernel names serve both.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};

use crate::cuda::CudaBackend;
use crate::element::Element;
use crate::emulator::{EMULATOR_LIMITS, Emulator, EmulatorConfig, HostBuffer, LaunchStats};
use crate::error::{Error, Result};
use crate::kernel::Launch;
use crate::planner::{DeviceLimits, KernelConfig};

pub(crate) enum Backend {
    Cuda(CudaBackend),
    Emulator(Emulator),
}

/// A handle to a device; cheap to clone (clones share the context, stream and loaded kernels).
#[derive(Clone)]
pub struct Device {
    pub(crate) backend: Arc<Backend>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Device({})", self.name())
    }
}

/// Device memory behind one or more tensors (views share it).
pub(crate) enum Buffer<T> {
    Cuda(CudaSlice<T>),
    Host(HostBuffer),
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
        }
    }
}

impl Device {
    /// Opens CUDA device `ordinal` on its default stream. Errors (never panics) when the crate
    /// was built without nvcc, the driver is missing or too old, there is no GPU, or the ordinal
    /// is out of range; each error says what to do.
    pub fn cuda(ordinal: usize) -> Result<Device> {
        Ok(Device {
            backend: Arc::new(Backend::Cuda(CudaBackend::open(ordinal)?)),
        })
    }

    /// Uses a cudarc stream the caller already owns: operations are enqueued on it, and
    /// `CudaSlice`s from its context can be wrapped with `DeviceTensor::from_cuda_slice`.
    pub fn cuda_on_stream(stream: Arc<CudaStream>) -> Result<Device> {
        Ok(Device {
            backend: Arc::new(Backend::Cuda(CudaBackend::on_stream(stream)?)),
        })
    }

    /// The CPU SIMT emulator with default settings (forward schedule, one worker per core).
    pub fn emulator() -> Device {
        Device::emulator_with(EmulatorConfig::default())
    }

    /// The CPU SIMT emulator with a chosen thread schedule and worker count.
    pub fn emulator_with(config: EmulatorConfig) -> Device {
        Device {
            backend: Arc::new(Backend::Emulator(Emulator::new(config))),
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

    /// What the planner sees of this device.
    pub fn limits(&self) -> DeviceLimits {
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

    /// Resolves every kernel entry point the planner can choose, so that a broken or partial
    /// image fails here rather than at a first launch, and first launches pay no lookup.
    /// Returns how many entry points were checked.
    pub fn preload_kernels(&self) -> Result<usize> {
        let names: Vec<String> = KernelConfig::all().iter().map(KernelConfig::name).collect();
        match &*self.backend {
            Backend::Cuda(c) => c.preload(&names)?,
            Backend::Emulator(_) => {
                let available = crate::emulator::emulator_kernel_names();
                if let Some(missing) = names.iter().find(|n| !available.contains(n)) {
                    return Err(Error::Launch {
                        kernel: missing.clone(),
                        detail: "entry point missing from the emulator image".into(),
                    });
                }
            }
        }
        Ok(names.len())
    }

    /// Allocates `len` elements (at least one, so that every buffer has a real address), zeroed
    /// when asked: a memset on the stream on a GPU. Uninitialised emulator memory is filled with
    /// `T::poison()`, so that an element no kernel wrote never passes for a result.
    pub(crate) fn alloc<T: Element>(&self, len: usize, zeroed: bool) -> Result<Buffer<T>> {
        match &*self.backend {
            Backend::Cuda(c) => {
                let slice = if zeroed {
                    c.stream.alloc_zeros::<T>(len.max(1))
                } else {
                    // SAFETY: any bit pattern is a valid f32/f16/bf16.
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

    /// Runs the launches of one operation in order on this device's stream.
    pub(crate) fn launch(&self, launches: &[Launch]) -> Result<()> {
        match &*self.backend {
            Backend::Cuda(c) => launches.iter().try_for_each(|l| c.launch(l)),
            Backend::Emulator(e) => e.launch(launches),
        }
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
        let params = crate::kernel::SoftmaxParams {
            y: y.addr(),
            rows: 1,
            cols: y.len() as i64,
            ..Default::default()
        };
        let ranges = [y.access_range(true)];
        let _stream = e.stream();
        let stats = e.run(kernel, [1, 1, threads, dynamic_smem], &params, &ranges)?;
        e.record(stats);
        Ok(())
    }
}
