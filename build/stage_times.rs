//! How long each part of the build took (wall time, on the build script's threads): written to
//! OUT_DIR/build_times.txt at the end, so that the next person sees where a clean build's time
//! goes (CI prints it). Parts that run side by side overlap: the emulator beside the GPU image,
//! the NVRTC and ptxas jobs beside each other.

use std::sync::Mutex;
use std::time::Instant;

static TIMES: Mutex<Vec<(String, f64)>> = Mutex::new(Vec::new());

/// Runs `f`, recording its wall time under `label`.
pub fn timed<R>(label: impl Into<String>, f: impl FnOnce() -> R) -> R {
    let start = Instant::now();
    let r = f();
    let seconds = start.elapsed().as_secs_f64();
    TIMES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((label.into(), seconds));
    r
}

/// Records a line without a time (what was skipped, and why).
pub fn note(label: impl Into<String>) {
    TIMES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((label.into(), f64::NAN));
}

/// The recorded parts, one a line, in the order they finished.
pub fn report() -> String {
    let times = TIMES.lock().unwrap_or_else(|p| p.into_inner());
    times
        .iter()
        .map(|(label, s)| {
            if s.is_nan() {
                format!("{label}\n")
            } else {
                format!("{s:8.1} s  {label}\n")
            }
        })
        .collect()
}
