//! The emulator under load, as users run it: many cores, many threads, many devices. Resources
//! stay bounded, operations of one device run in stream order, results do not depend on the
//! caller's floating-point environment, and a host resource failure is its own error.

mod common;

use std::sync::{Barrier, Mutex, MutexGuard};

use cuda_softmax::tools::check::{Rng, Tolerance, compare};
use cuda_softmax::tools::reference;
use cuda_softmax::{Device, DeviceTensor, Dtype, EmulatorConfig, Error, Schedule};

/// The tests of this file run one at a time: each measures the whole process (its mappings,
/// its resident memory) while it loads the emulator.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Memory mappings of this process (Linux allows about 65,530).
fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps").map_or(0, |m| m.lines().count())
}

/// The size of this executable's static thread-local storage (its PT_TLS segment), which glibc
/// allocates and zeroes in every thread the process starts, the user's threads included.
fn static_tls_bytes() -> u64 {
    let exe = std::fs::read("/proc/self/exe").expect("read /proc/self/exe");
    let u16_at = |at: usize| u16::from_le_bytes(exe[at..at + 2].try_into().unwrap()) as usize;
    let u64_at = |at: usize| u64::from_le_bytes(exe[at..at + 8].try_into().unwrap());
    assert_eq!(&exe[..5], b"\x7fELF\x02", "a 64-bit ELF executable");
    let (phoff, phentsize, phnum) = (u64_at(0x20) as usize, u16_at(0x36), u16_at(0x38));
    (0..phnum)
        .map(|i| phoff + i * phentsize)
        .filter(|&ph| u32::from_le_bytes(exe[ph..ph + 4].try_into().unwrap()) == 7) // PT_TLS
        .map(|ph| u64_at(ph + 0x28)) // p_memsz
        .sum()
}

/// This process's resident memory, in bytes.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/self/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in kB");
    kib * 1024
}

fn emulator(workers: usize) -> Device {
    Device::emulator_with(EmulatorConfig::default().workers(workers))
}

/// Runs softmax over `rows x cols` random logits on `device`: poisoned output, compared with
/// the f64 reference (the shared correctness suite's check).
fn check_softmax(device: &Device, rng: &mut Rng, rows: usize, cols: usize) {
    let x: Vec<f32> = rng.logits(rows * cols, 6.0);
    common::check_case(device, &x, rows, cols, common::ALIGNED, "under load");
}

/// What 5591579 aborted on: 64 workers twice, 16 threads each with its own 16-worker emulator,
/// 40 threads sharing one device. The mappings stay far below the process limit throughout
/// (each emulator worker used to map ~2,048 regions and keep them for the life of the process).
#[test]
fn many_workers_threads_and_devices_keep_mappings_bounded() {
    let _one = one_at_a_time();
    let seed = Rng::seed_from_env();
    println!("seed {seed}");
    let before = mappings();
    let mut peak = before;
    // Block family, 300 blocks: every worker gets blocks.
    for _ in 0..2 {
        let d = emulator(64);
        check_softmax(&d, &mut Rng::new(seed), 300, 2000);
        peak = peak.max(mappings());
    }
    std::thread::scope(|s| {
        for t in 0..16u64 {
            s.spawn(move || {
                let d = emulator(16);
                check_softmax(&d, &mut Rng::new(seed ^ t), 64, 3000);
            });
        }
    });
    peak = peak.max(mappings());
    let shared = Device::emulator();
    let start = Barrier::new(40);
    std::thread::scope(|s| {
        for t in 0..40u64 {
            let (shared, start) = (&shared, &start);
            s.spawn(move || {
                start.wait();
                check_softmax(shared, &mut Rng::new(seed ^ (t << 8)), 40, 700);
            });
        }
    });
    peak = peak.max(mappings());
    println!("mappings: {before} before, {peak} at the peak");
    // 64 arenas of 2 mappings, their shadows, helper thread stacks: a few hundred at most.
    assert!(
        peak < before + 1500,
        "{} mappings added (before {before})",
        peak - before
    );
}

/// 64 threads launching at once on one device, and the same with the CPU count an emulator
/// sizes itself from faked high (EmulatorConfig::workers = 192 is clamped to 64).
#[test]
fn sixty_four_threads_launch_concurrently_on_one_device() {
    let _one = one_at_a_time();
    let seed = Rng::seed_from_env();
    println!("seed {seed}");
    for workers in [0, 192] {
        let d = emulator(workers);
        let start = Barrier::new(64);
        std::thread::scope(|s| {
            for t in 0..64u64 {
                let (d, start) = (&d, &start);
                s.spawn(move || {
                    let mut rng = Rng::new(seed ^ t);
                    start.wait();
                    for cols in [7, 300, 5000] {
                        check_softmax(d, &mut rng, 20, cols);
                    }
                });
            }
        });
    }
}

/// A copy into a view on one thread and a softmax reading the same memory on another are
/// ordered as on a stream: the softmax sees one whole input or the other, never a mix. The
/// online family (rows too long for shared memory) reads its input twice, so a copy landing
/// between its passes would show.
#[test]
fn operations_of_one_device_run_in_stream_order() {
    let _one = one_at_a_time();
    let d = Device::emulator();
    let (rows, cols) = (8, 30_000); // the online family on the emulator's limits
    let mut rng = Rng::new(Rng::seed_from_env());
    let a: Vec<f32> = rng.logits(rows * cols, 8.0);
    let b: Vec<f32> = a.iter().map(|v| -v * 0.5).collect();
    let softmax_of = |x: &[f32]| {
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        reference::softmax_rows(&x64, cols)
    };
    let (want_a, want_b) = (softmax_of(&a), softmax_of(&b));
    let x = DeviceTensor::from_host(&d, &a, &[rows, cols]).unwrap();
    let mut writer = x.view(0, &[rows, cols]).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            // Keeps copying until the reader is done, so the two always overlap.
            let mut i = 0usize;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                writer
                    .copy_from_host(if i.is_multiple_of(2) { &b } else { &a })
                    .unwrap();
                i += 1;
            }
        });
        let _stop = StopOnDrop(&done);
        for _ in 0..40 {
            let y = cuda_softmax::softmax(&x).unwrap().to_host().unwrap();
            let tol = Tolerance::softmax(Dtype::F32);
            let (ca, cb) = (compare(&y, &want_a, tol), compare(&y, &want_b, tol));
            assert!(
                ca.passed() || cb.passed(),
                "softmax saw its input change under it: vs a {ca}; vs b {cb}"
            );
        }
    });
}

/// Tells the writer to stop even when an assertion unwinds the reader.
struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);
impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

unsafe extern "C" {
    fn fegetround() -> i32;
    fn fesetround(mode: i32) -> i32;
}

/// x86-64 glibc's rounding modes (fenv.h).
#[cfg(target_arch = "x86_64")]
const ROUNDING_MODES: [(&str, i32); 3] = [
    ("upward", 0x800),
    ("downward", 0x400),
    ("toward zero", 0xc00),
];
#[cfg(not(target_arch = "x86_64"))]
const ROUNDING_MODES: [(&str, i32); 0] = [];

fn softmax_bits<T: cuda_softmax::Element>(d: &Device, x: &[T], cols: usize) -> Vec<T> {
    let xt = DeviceTensor::from_host(d, x, &[x.len() / cols, cols]).unwrap();
    cuda_softmax::softmax(&xt).unwrap().to_host().unwrap()
}

/// Emulated threads round to nearest like a GPU whatever rounding mode the calling thread set:
/// the results are bit-identical (both emulator flavours, f32 and f16).
#[test]
fn results_do_not_depend_on_the_callers_rounding_mode() {
    let _one = one_at_a_time();
    let mut rng = Rng::new(Rng::seed_from_env());
    // (The FMA flavour is built with the crate feature emulator-fma, which this crate's own
    // tests always have: see Cargo.toml.)
    let flavours: &[bool] = if cfg!(feature = "emulator-fma") {
        &[false, true]
    } else {
        &[false]
    };
    for &fma_contraction in flavours {
        // One worker: the blocks run on the calling thread, whose mode is the one changed.
        let d = Device::emulator_with(
            EmulatorConfig::default()
                .workers(1)
                .fma_contraction(fma_contraction)
                .schedule(Schedule::Forward),
        );
        for cols in [40, 1000, 30_000] {
            let x32: Vec<f32> = rng.logits(3 * cols, 9.0);
            let x16: Vec<cuda_softmax::f16> = rng.logits(3 * cols, 9.0);
            let (want32, want16) = (softmax_bits(&d, &x32, cols), softmax_bits(&d, &x16, cols));
            for (name, mode) in ROUNDING_MODES {
                // SAFETY: fesetround changes only this thread's floating-point environment; it
                // is restored right after the two operations.
                let (got32, got16) = unsafe {
                    let saved = fegetround();
                    assert_eq!(fesetround(mode), 0);
                    let r = (softmax_bits(&d, &x32, cols), softmax_bits(&d, &x16, cols));
                    fesetround(saved);
                    r
                };
                let same32 = got32
                    .iter()
                    .zip(&want32)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                let same16 = got16
                    .iter()
                    .zip(&want16)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same32 && same16,
                    "rounding {name}, {cols} columns, fma {fma_contraction}: results changed"
                );
            }
        }
    }
}

unsafe extern "C" {
    fn setrlimit(resource: i32, limit: *const [u64; 2]) -> i32;
}
const RLIMIT_AS: i32 = 9; // Linux

/// Run by `a_host_resource_failure_is_its_own_error` in a child process whose address space is
/// capped just above what it uses: the emulator cannot map stacks for its workers.
#[test]
#[ignore = "run in a child process by a_host_resource_failure_is_its_own_error"]
fn child_with_capped_address_space() {
    let _one = one_at_a_time();
    if std::env::var_os("CS_RESOURCE_CHILD").is_none() {
        return;
    }
    let d = emulator(4);
    let x = DeviceTensor::<f32>::from_host(&d, &vec![0.5; 64 * 100], &[64, 100]).unwrap();
    let mut y = DeviceTensor::<f32>::uninit(&d, &[64, 100]).unwrap();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let vm_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let cap = (vm_kb + 8 * 1024) * 1024; // 8 MiB of headroom: less than one arena of stacks
    // SAFETY: plain system call on this process.
    assert_eq!(unsafe { setrlimit(RLIMIT_AS, &[cap, cap]) }, 0);
    match cuda_softmax::softmax_into(&x, &mut y) {
        Err(Error::EmulatorResources { kernel, detail }) => {
            println!("CHILD-RESULT resources: {kernel}: {detail}")
        }
        other => println!("CHILD-RESULT other: {other:?}"),
    }
}

/// When the host cannot provide memory for the emulated threads the operation returns
/// Error::EmulatorResources (not a kernel fault, not an abort), and the process goes on.
#[test]
fn a_host_resource_failure_is_its_own_error() {
    let _one = one_at_a_time();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_with_capped_address_space",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CS_RESOURCE_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the child died ({}): {stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("CHILD-RESULT resources:") && stdout.contains("could not map"),
        "{stdout}"
    );
}

/// A user's process has many threads that never touch the emulator; linking the crate must not
/// make each of them costly. The emulator's static `__shared__` arrays once were thread-locals of
/// the executable: 3.5 MB zeroed in every new thread (672 MB resident for 192 idle threads), and
/// a test thread's default 2 MiB stack overflowed while printing a panic's backtrace.
#[test]
#[cfg(target_os = "linux")]
fn idle_threads_of_a_users_process_stay_cheap() {
    let _one = one_at_a_time();
    let tls = static_tls_bytes();
    println!("static thread-local storage: {tls} bytes");

    // Make sure the emulator's state exists (a launch with static shared memory), then start
    // 192 threads that do nothing and see what they cost.
    let device = emulator(2);
    let mut rng = Rng::new(Rng::seed_from_env());
    check_softmax(&device, &mut rng, 3, 3000);
    const THREADS: usize = 192;
    let started = Barrier::new(THREADS + 1);
    let measured = Barrier::new(THREADS + 1);
    let before = resident_bytes();
    let per_thread = std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                started.wait();
                measured.wait();
            });
        }
        started.wait();
        let grown = resident_bytes().saturating_sub(before);
        measured.wait();
        grown / THREADS as u64
    });
    println!("resident memory per idle thread: {} KiB", per_thread / 1024);
    assert!(
        tls <= 64 * 1024,
        "{tls} bytes of static thread-local storage in every thread"
    );
    assert!(
        per_thread <= 256 * 1024,
        "each idle thread costs {per_thread} bytes of resident memory"
    );
}
