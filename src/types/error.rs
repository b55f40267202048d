//! Every way an operation can fail, each with what to do about it.

use std::fmt;

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// What went wrong. `Display` gives a message that also says what to do about it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// The crate was built without nvcc, so it carries no GPU image.
    NoCudaImage,
    /// libcuda (the NVIDIA driver library) could not be loaded.
    DriverNotFound,
    /// A driver library was found but cannot be used: it does not load, or it lacks driver
    /// functions this crate calls (a stub, a partial install, a damaged file).
    DriverUnusable {
        /// The library file name that was found.
        library: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The driver loaded but reports no CUDA device.
    NoGpu,
    /// `Device::cuda(ordinal)` with an ordinal past the last device.
    NoSuchDevice {
        /// The ordinal asked for.
        ordinal: usize,
        /// How many devices the driver reports.
        count: usize,
    },
    /// The driver could not load the embedded image (usually: driver older than the toolkit).
    ImageLoad {
        /// The driver's CUDA version, e.g. 13000 for 13.0.
        driver_version: i32,
        /// The GPU's (major, minor) compute capability.
        compute_capability: (i32, i32),
        /// The driver's error.
        detail: String,
    },
    /// The embedded image does not inflate (a damaged build): rebuild the crate.
    CorruptImage {
        /// What the decompressor said.
        detail: String,
    },
    /// A CUDA driver call failed.
    Driver {
        /// The driver entry point.
        call: &'static str,
        /// The driver's error.
        detail: String,
    },
    /// A kernel faulted on the emulator (out-of-bounds access, barrier or shuffle divergence).
    EmulatorFault {
        /// The entry point that faulted.
        kernel: String,
        /// What the emulator caught, and where.
        detail: String,
    },
    /// The emulator could not get host resources (memory, threads) to run a launch; not a fault
    /// of the kernel.
    EmulatorResources {
        /// The entry point.
        kernel: String,
        /// What the host could not provide.
        detail: String,
    },
    /// A launch asked for something the device cannot do.
    Launch {
        /// The entry point.
        kernel: String,
        /// Why it could not run.
        detail: String,
    },
    /// Host data and shape disagree in size.
    LengthMismatch {
        /// Elements the shape (or view) holds.
        expected: usize,
        /// Elements given.
        got: usize,
    },
    /// A shape whose element count (or byte size) does not fit in usize.
    ShapeTooLarge {
        /// The shape asked for.
        shape: Vec<usize>,
    },
    /// The device (or, for the emulator, the host) could not provide the memory.
    OutOfMemory {
        /// The size of the failed allocation.
        bytes: usize,
    },
    /// Two tensors that must have the same shape do not.
    ShapeMismatch {
        /// Which operation and which tensors.
        what: &'static str,
        /// The first shape.
        left: Vec<usize>,
        /// The second shape.
        right: Vec<usize>,
    },
    /// A view or slice reaches past its tensor.
    OutOfRange {
        /// Which call.
        what: &'static str,
        /// First element asked for.
        offset: usize,
        /// Elements asked for.
        len: usize,
        /// Elements there are.
        available: usize,
    },
    /// A range whose start is past its end.
    BadRange {
        /// Which call.
        what: &'static str,
        /// The start asked for.
        start: usize,
        /// The end asked for.
        end: usize,
    },
    /// The tensors of one operation live on different devices.
    DeviceMismatch,
    /// Output and input share memory without being the same elements.
    PartialOverlap,
    /// An operation over the last dimension got a tensor of rank 0.
    ScalarInput {
        /// The operation.
        op: &'static str,
    },
    /// A CUDA buffer handed in does not belong to the device's context.
    ForeignBuffer,
    /// An owning view (`view`, `rows`, `row`, `reshape` on a `DeviceTensor`) of memory the
    /// caller lent: it could outlive the borrow. Views from the `TensorRef`/`TensorMut` work.
    BorrowedView {
        /// The call.
        what: &'static str,
    },
    /// Borrowed memory not aligned for its element type.
    Misaligned {
        /// The address of the first element.
        addr: u64,
        /// The alignment the element type needs, in bytes.
        align: usize,
    },
    /// Borrowed memory that the device cannot use in place (another stream, a null pointer,
    /// host memory on a GPU device, device memory on the emulator).
    BadBorrow {
        /// What is wrong and what to do.
        what: String,
    },
    /// A softmax scale that is not a positive finite number.
    BadScale {
        /// The scale given.
        scale: f32,
    },
    /// A dimension index outside the tensor's rank.
    BadDim {
        /// The dimension asked for (negative counts from the end).
        dim: isize,
        /// The tensor's rank.
        rank: usize,
    },
    /// A valid request this version does not implement yet.
    Unsupported {
        /// What was asked for and what works instead.
        what: String,
    },
    /// An option or argument outside its range (cross-entropy's label smoothing, z-loss,
    /// softcap, class weights, an empty vocabulary).
    BadArgument {
        /// What is wrong and what is allowed.
        what: String,
    },
    /// A cross-entropy target outside `[0, classes)` that is not the ignored index. Reported by
    /// the target check before anything is written (`CrossEntropy::check_targets`).
    InvalidTarget {
        /// The first row with such a target (rows count over the logits' leading dimensions).
        row: usize,
        /// Its target.
        target: i64,
        /// The number of classes (the logits' last dimension).
        classes: usize,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoCudaImage if crate::runtime::image::BUILT_WITHOUT_IMAGE_ON_REQUEST => write!(
                f,
                "this build of cuda-softmax has no GPU image: it was built with CUDA_SOFTMAX_NO_GPU_IMAGE=1 (or \
                 CUDA_SOFTMAX_NO_NVCC=1); rebuild without it (Device::emulator() works without an image)"
            ),
            Error::NoCudaImage => write!(
                f,
                "this build of cuda-softmax has no GPU image because no CUDA compiler was found at build time; \
                 run scripts/install-nvcc.sh (or install a CUDA toolkit), then rebuild (Device::emulator() works without one)"
            ),
            Error::DriverNotFound => write!(
                f,
                "the NVIDIA driver library (libcuda.so) was not found: install an NVIDIA driver ({} or newer for \
                 this build's image) or use Device::emulator()",
                crate::runtime::image::driver_floor()
            ),
            Error::DriverUnusable { library, problem } => write!(
                f,
                "the NVIDIA driver library {library} cannot be used: {problem}. It is not a working driver, or one \
                 too old (a partial install, a damaged file, a stand-in first on LD_LIBRARY_PATH): install or \
                 repair the NVIDIA driver ({} or newer for this build's image), check that nvidia-smi works and that \
                 LD_LIBRARY_PATH puts no other libcuda first, or use Device::emulator()",
                crate::runtime::image::driver_floor()
            ),
            Error::NoGpu => write!(
                f,
                "the NVIDIA driver reports no CUDA device; check nvidia-smi and CUDA_VISIBLE_DEVICES, or use Device::emulator()"
            ),
            Error::NoSuchDevice { ordinal, count } => write!(
                f,
                "there is no CUDA device {ordinal}: this machine has {count} (ordinals 0..{count})"
            ),
            Error::ImageLoad {
                driver_version,
                compute_capability,
                detail,
            } => write!(
                f,
                "the driver could not load the kernel image ({detail}). Driver supports CUDA {}.{}; GPU is sm_{}{}; \
                 the image was built by {} (PTX ISA {}) for {} and needs driver >= {}. Update the driver, or rebuild \
                 without CUDA_HOME/NVCC so that build.rs uses the pinned CUDA 12 toolchain of scripts/install-nvcc.sh \
                 (drivers >= 525), or with CUDA_COMPUTE_CAP set to this GPU",
                driver_version / 1000,
                (driver_version % 1000) / 10,
                compute_capability.0,
                compute_capability.1,
                crate::runtime::image::TOOLKIT_VERSION,
                crate::runtime::image::PTX_VERSION,
                crate::runtime::image::ARCHS,
                crate::runtime::image::MIN_DRIVER,
            ),
            Error::CorruptImage { detail } => write!(
                f,
                "the GPU image embedded in this build ({}) is damaged: {detail}. Run `cargo clean -p cuda-softmax` \
                 and rebuild (the build verifies its image cache, ~/.cache/cuda-softmax/images or \
                 CUDA_SOFTMAX_CACHE_DIR, and rebuilds a damaged entry)",
                crate::runtime::image::built_file().unwrap_or_else(|| "softmax.fatbin.zst".into())
            ),
            Error::Driver {
                call: "cuInit",
                detail,
            } => write!(
                f,
                "the NVIDIA driver failed to initialise (cuInit: {detail}). Check that nvidia-smi works; after a \
                 driver update, reboot (the kernel module and the library must match); in a container, start it with \
                 GPU access (the NVIDIA container toolkit, --gpus); a toolkit's stubs/libcuda.so must not come first on \
                 LD_LIBRARY_PATH. Or use Device::emulator()"
            ),
            Error::Driver { call, detail } => write!(f, "CUDA driver call {call} failed: {detail}"),
            Error::EmulatorFault { kernel, detail } => {
                write!(f, "kernel {kernel} faulted on the emulator: {detail}")
            }
            Error::EmulatorResources { kernel, detail } => write!(
                f,
                "the emulator could not run {kernel}: {detail}. The host is short of memory or threads: free \
                 memory, or use fewer workers (EmulatorConfig::workers) or fewer concurrent emulator launches"
            ),
            Error::Launch { kernel, detail } => write!(f, "cannot launch {kernel}: {detail}"),
            Error::LengthMismatch { expected, got } => write!(
                f,
                "host data has {got} elements but the shape needs {expected}"
            ),
            Error::ShapeTooLarge { shape } => {
                write!(
                    f,
                    "shape {shape:?} has more elements than memory can address"
                )
            }
            Error::OutOfMemory { bytes } => write!(
                f,
                "could not allocate {bytes} bytes; free tensors or use smaller batches"
            ),
            Error::ShapeMismatch { what, left, right } => {
                write!(f, "{what}: shapes {left:?} and {right:?} differ")
            }
            Error::OutOfRange {
                what,
                offset,
                len,
                available,
            } => match offset.checked_add(*len) {
                Some(end) => write!(
                    f,
                    "{what}: elements {offset}..{end} are outside the {available} available"
                ),
                None => write!(
                    f,
                    "{what}: {len} elements from {offset} reach past the end of memory ({available} available)"
                ),
            },
            Error::BadRange { what, start, end } => write!(
                f,
                "{what}: start {start} is past end {end}; ask for start..end with start <= end"
            ),
            Error::DeviceMismatch => write!(
                f,
                "the tensors are on different devices; copy them to one device first"
            ),
            Error::PartialOverlap => write!(
                f,
                "output and input share memory without being the same elements; use separate buffers or the exact same \
                 view for an in-place operation"
            ),
            Error::ScalarInput { op } => write!(
                f,
                "{op} works over the last dimension and needs a tensor of rank 1 or more"
            ),
            Error::ForeignBuffer => write!(
                f,
                "the CUDA buffer belongs to another context than this device's; wrap it with a Device made from the same \
                 stream (Device::cuda_on_stream)"
            ),
            Error::BorrowedView { what } => write!(
                f,
                "{what} of a tensor over borrowed memory would outlive the borrow; call {what} on the TensorRef or \
                 TensorMut instead (its views keep the borrow's lifetime)"
            ),
            Error::Misaligned { addr, align } => write!(
                f,
                "borrowed memory at {addr:#x} is not aligned to {align} bytes as its element type needs; pass an \
                 aligned pointer or element offset"
            ),
            Error::BadBorrow { what } => write!(f, "{what}"),
            Error::BadScale { scale } => write!(
                f,
                "softmax scale {scale} is not a positive number in [1e-30, 1e30]; pass such a scale (for a negative \
                 temperature, negate the input instead)"
            ),
            Error::BadDim { dim, rank } => write!(
                f,
                "dimension {dim} is out of range for a tensor of rank {rank}; use 0..{rank} or -{rank}..-1"
            ),
            Error::Unsupported { what } => write!(f, "{what}"),
            Error::BadArgument { what } => write!(f, "{what}"),
            Error::InvalidTarget {
                row,
                target,
                classes,
            } => write!(
                f,
                "cross-entropy target {target} of row {row} is not a class in [0, {classes}) nor the ignored index; \
                 fix the targets (or set ignore_index to the padding value). Nothing was written."
            ),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    pub(crate) fn driver(call: &'static str, e: impl fmt::Debug) -> Error {
        Error::Driver {
            call,
            detail: format!("{e:?}"),
        }
    }
}
