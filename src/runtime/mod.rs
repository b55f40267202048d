//! Where kernels run: the `Device` front (runtime::device) over two backends, CUDA through cudarc
//! (cuda, with the driver checks of driver, the embedded image of image and the NVRTC fallback
//! of jit) and the CPU SIMT emulator (emulator); launch holds the parameter block and launch
//! description both backends execute.

// (shared with build.rs: the user cache folder and the cache-key hash)
#[path = "../../build/cache_paths.rs"]
pub mod cache_paths;
pub mod cuda;
pub mod device;
pub mod driver;
pub mod emulator;
pub mod image;
pub mod jit;
pub mod launch;
