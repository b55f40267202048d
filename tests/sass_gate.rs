//! The static performance gate: reads the machine code of the embedded image (cuobjdump -sass,
//! sm_90 and sm_80) and holds every kernel's innermost loops to budgets. Runs whenever the crate
//! was built with nvcc and cuobjdump is beside it (scripts/install-nvcc.sh pins it); CI sets
//! CS_REQUIRE_CUDA_IMAGE=1, which makes a missing tool a failure instead of a skip.
//!
//! Budgets (issue 7), each test's failure message carrying the measured values:
//! - kernels with a 16-byte path (warp v4/v8, block, online, split): at least one loop moves
//!   only 16-byte packs, and no loop that moves 16-byte packs of global memory moves anything
//!   narrower there (scalar head/tail loops and fallbacks for rows whose x and y differ in
//!   alignment have no 16-byte global access, or also narrow shared ones, and are not steady
//!   state);
//! - at most 0.6 warp instructions per element in the steady state of every kernel that serves
//!   rows of 32 columns or more, 1.0 below, per two tensors moved (backward kernels move three:
//!   0.9 and 1.5); 0.8 for the strided family's one-row-a-lane fallback (see `budget`). A kernel over budget may be listed in OVER_BUDGET
//!   with its measured value while work on it is in progress: a ratchet (worse fails, and so
//!   does better, until the entry is removed);
//! - every kernel has a steady-state loop the census can measure;
//! - no local memory (spills or stack arrays) in any kernel;
//! - bytes in flight per SM (src/tools/occupancy.rs: ptxas registers and shared memory, and the loads
//!   each thread issues before the first use) of at least 16 KB for every plan of the issue's
//!   sweep on H100 and H200 limits, or the whole input where it is smaller.
//!
//! Shared-memory wavefronts are gated on the emulator (tests/emulator_checks.rs), which sees the
//! lanes of each access.
//!
//! `cargo test --release --test sass_gate -- --nocapture` prints the census table.

use cuda_softmax::tools::image;
use cuda_softmax::tools::planner::{CrossEntropyStage, Family, KernelConfig, Op};
use cuda_softmax::tools::sass::{self, Class, Function, LoopCensus};

const ARCHS: [&str; 2] = ["sm_90", "sm_80"];

fn required() -> bool {
    std::env::var("CS_REQUIRE_CUDA_IMAGE").is_ok_and(|v| v == "1")
}

/// The SASS of every kernel for `arch`, or None (with a notice) when the gate cannot run here.
fn sass_for(arch: &str) -> Option<Vec<Function>> {
    let Some(fatbin) = image::fatbin().ok() else {
        assert!(
            !required(),
            "CS_REQUIRE_CUDA_IMAGE=1 but the crate was built without nvcc"
        );
        eprintln!("SKIPPED: no GPU image (the crate was built without nvcc)");
        return None;
    };
    if !image::ARCHS.split(',').any(|a| a == arch) {
        assert!(
            !required(),
            "the image has no {arch} (built with CUDA_COMPUTE_CAP?)"
        );
        eprintln!("SKIPPED: the image has no {arch} SASS (CUDA_COMPUTE_CAP narrowed it)");
        return None;
    }
    let Some(tool) = image::cuobjdump() else {
        assert!(
            !required(),
            "cuobjdump not found (scripts/install-nvcc.sh installs it)"
        );
        eprintln!("SKIPPED: cuobjdump not found (scripts/install-nvcc.sh installs it)");
        return None;
    };
    let listing = image::run_cuobjdump(&tool, &["-sass", "-arch", arch], &fatbin)
        .unwrap_or_else(|e| panic!("{e}"));
    let functions = sass::parse_cuobjdump(&listing);
    assert!(!functions.is_empty(), "cuobjdump printed no functions");
    Some(functions)
}

/// Bytes of an input element and of an output element (4 for the `_to_f32` ops' output).
fn element_bytes(kernel: &str) -> (u32, u32) {
    let config = config_of(kernel);
    let output = if config.op.writes_one_per_row() {
        config.dtype // logsumexp: counted by its input (its one store a row is left out)
    } else {
        config.op.output_dtype(config.dtype)
    };
    (config.dtype.size_bytes() as u32, output.size_bytes() as u32)
}

/// Tensors the kernel reads an element of: y and dy for a backward pass.
fn inputs(kernel: &str) -> u32 {
    config_of(kernel).op.inputs() as u32
}

fn all_loops(f: &Function) -> Vec<LoopCensus> {
    let one_per_row = config_of(&f.name).op.writes_one_per_row();
    sass::innermost_loops(f)
        .into_iter()
        .map(|l| {
            let (input, output) = element_bytes(&f.name);
            let mut c = sass::census(f, l, input, output, inputs(&f.name));
            if one_per_row {
                // logsumexp's warp kernels store one f32 a row inside their row loop: that
                // store is the op's output, not a split pack, and is left out of the width checks
                // (its instruction still counts).
                c.by_class
                    .retain(|k, _| !matches!(k, Class::GlobalStore(b) if *b < 16));
            }
            c
        })
        .collect()
}

/// Does every memory access of the loop (global or shared) move 16 bytes?
fn all_wide(c: &LoopCensus) -> bool {
    c.by_class.keys().all(|k| match k {
        Class::GlobalLoad(b)
        | Class::GlobalStore(b)
        | Class::SharedLoad(b)
        | Class::SharedStore(b) => *b == 16,
        _ => true,
    })
}

/// The loops that make a kernel's steady state. In a kernel with a 16-byte path, the loops whose
/// every access is 16 bytes: the others are the scalar head and tail of a row and the
/// fallbacks for rows whose x and y differ in alignment. In a scalar kernel, every innermost
/// loop.
fn steady_loops(f: &Function) -> Vec<LoopCensus> {
    let loops = all_loops(f);
    if has_vector_path(&config_of(&f.name)) {
        loops.into_iter().filter(all_wide).collect()
    } else {
        loops
    }
}

#[test]
fn census_report() {
    for arch in ARCHS {
        let Some(functions) = sass_for(arch) else {
            continue; // (an architecture the image lacks: the others are still checked)
        };
        println!("== {arch}");
        for f in &functions {
            let loops = steady_loops(f);
            let per_element: f64 = loops.iter().map(|c| c.per_element()).sum();
            let classes: Vec<String> = loops
                .iter()
                .map(|c| {
                    let parts: Vec<String> = c
                        .by_class
                        .iter()
                        .map(|(k, n)| format!("{}:{n}", k.label()))
                        .collect();
                    format!(
                        "[{} insns / {} el: {}]",
                        c.instructions,
                        c.elements,
                        parts.join(" ")
                    )
                })
                .collect();
            println!("{:<40} {:>6.3} {}", f.name, per_element, classes.join(" "));
        }
    }
}

/// Does the kernel loop over a row's elements? Not logsumexp's split write (one value a row
/// from the chunk states) nor the cross-entropy stages that work from per-row values (prepare,
/// finish, reduce: loops over rows and chunk states, their traffic a few bytes a row).
fn has_element_loop(config: &KernelConfig) -> bool {
    !matches!(
        (config.op, config.family),
        (Op::LogSumExp, Family::SplitWrite { .. })
            | (
                Op::CrossEntropy,
                Family::CrossEntropy {
                    stage: CrossEntropyStage::Prepare
                        | CrossEntropyStage::Finish
                        | CrossEntropyStage::Reduce
                }
            )
    )
}

/// A cross-entropy stats or grad kernel: one loop over the chunk per option variant (plain,
/// softcap; with weighted smoothing, each also gathers f32 class weights one at a time, so
/// those loops are not all-wide), alternatives rather than phases: its cost is the plain loop's
/// (the cheapest steady loop), and the softcap loop (accurate tanhf) is held to its own budget.
fn is_cross_entropy_pass(config: &KernelConfig) -> bool {
    config.op == Op::CrossEntropy && has_element_loop(config)
}

fn config_of(kernel: &str) -> KernelConfig {
    KernelConfig::all()
        .into_iter()
        .find(|k| k.name() == kernel)
        .unwrap_or_else(|| panic!("{kernel} is in the image but not in KernelConfig::all()"))
}

/// Does the kernel move rows in 16-byte packs (when they are aligned)?
fn has_vector_path(config: &KernelConfig) -> bool {
    // The strided family moves one element a lane: a warp's 32 lanes read consecutive
    // elements of the inner dimension (coalesced), with no 16-byte access to make.
    !matches!(
        config.family,
        Family::Warp { vec: 1, .. } | Family::Strided { .. }
    )
}

/// Warp instructions per element allowed: 1.0 for kernels that only serve rows shorter than 32
/// columns, 0.6 for every other, per two tensors an element moves. The budget is issue time
/// against memory time: at copy speed an H100 moves a 16-bit element in and out in the time
/// its schedulers issue about 1.2 warp instructions, so 0.6 keeps a 2x margin. A backward
/// element moves three tensors (y and dy in, dx out), which leaves 1.5x the issue time for the
/// same margin: 0.9.
///
/// The strided family's one-row-a-lane kernels get 0.8 (1.2 backward): they serve tensors whose
/// inner dimension is odd or views not aligned to two elements (and rows that fit on chip only at
/// one row a lane), where a lane can move
/// nothing wider than one 2- or 4-byte element and each element pays its own load, store and
/// 64-bit address. 0.8 still leaves a 1.5x margin to the issue rate at copy speed. The
/// two-rows-a-lane kernels, which an even inner dimension of aligned tensors takes (unless only
/// one row a lane fits on chip), are held to 0.6.
fn budget(config: &KernelConfig) -> f64 {
    let per_two_tensors = match config.family {
        Family::Warp {
            width,
            cols_per_lane,
            ..
        } if width * cols_per_lane < 32 => 1.0,
        Family::Strided { vec: 1, .. } => 0.8,
        _ => 0.6,
    };
    let tensors = match config.family {
        // Cross-entropy stats reads the logits (nothing an element is written); grad reads
        // them and writes the gradient.
        Family::CrossEntropy {
            stage: CrossEntropyStage::Stats,
        } => 1.0,
        // The inputs and the output.
        _ => 1.0 + config.op.inputs() as f64,
    };
    per_two_tensors * tensors / 2.0
}

/// Kernels measured over budget, (arch, kernel, warp instructions per element): a ratchet for
/// work in progress. (Earlier entries, since fixed: the two-pass log-softmax backward for f32,
/// 0.912 on sm_90, where ptxas recomputed the scalar head and rebuilt three 64-bit addresses
/// every pack; the scalar logsumexp warp kernels at 1-16 lanes, 0.76-1.23, where NVVM rebuilt
/// each pack's 64-bit row address in its guarded load.)
///
/// The strided forward two-pass kernels pay for the compensated row sum of issue 26 (a lane may
/// fold a whole row of thousands of elements alone; a plain running sum missed the f32
/// tolerance): pairwise batch sums and Kahan's compensation add 4 instructions a batch and row.
/// One kernel crosses the budget by 0.3%; the next change to the strided loops should win it
/// back (its bf16 unpacking costs 45-47 integer instructions a pass, twice f16's).
const OVER_BUDGET: &[(&str, &str, f64)] = &[("sm_80", "softmax_strided_twopass_bf16_s8_v2", 0.602)];

fn per_element(f: &Function) -> f64 {
    let loops = steady_loops(f);
    if is_cross_entropy_pass(&config_of(&f.name)) {
        // The option variants of one pass move the same memory (the same access classes):
        // alternatives, of which the plain one (the cheapest) is the cost. Passes move
        // different memory (on chip: global -> shared, then shared -> global): their costs add.
        // The store-only loop is the ignored rows' zero writer, not a pass over the logits.
        let mut passes: std::collections::BTreeMap<Vec<String>, f64> = Default::default();
        for c in &loops {
            let memory: Vec<String> = c
                .by_class
                .keys()
                .filter(|k| {
                    matches!(
                        k,
                        Class::GlobalLoad(_)
                            | Class::GlobalStore(_)
                            | Class::SharedLoad(_)
                            | Class::SharedStore(_)
                    )
                })
                .map(|k| k.label())
                .collect();
            let loads = c
                .by_class
                .keys()
                .any(|k| matches!(k, Class::GlobalLoad(_) | Class::SharedLoad(_)));
            if loads {
                let cost = passes.entry(memory).or_insert(f64::INFINITY);
                *cost = cost.min(c.per_element());
            }
        }
        return passes.values().sum();
    }
    loops.iter().map(|c| c.per_element()).sum()
}

/// Warp instructions per element allowed the softcap variant of a cross-entropy pass: the
/// accurate tanhf is about 20 instructions an element (tanh.approx's 2^-11 error is far above
/// f32's tolerance), so it is compute-bound by design; this budget catches a collapse (local
/// memory, a division per element), not the tanh.
const SOFTCAP_BUDGET: f64 = 1.5;

#[test]
fn vector_paths_move_16_bytes_in_their_steady_loops() {
    for arch in ARCHS {
        let Some(functions) = sass_for(arch) else {
            continue; // (an architecture the image lacks: the others are still checked)
        };
        let mut failures = Vec::new();
        for f in &functions {
            let config = config_of(&f.name);
            if !has_vector_path(&config) || !has_element_loop(&config) {
                continue;
            }
            if !steady_loops(f).iter().any(|c| c.has_wide_global()) {
                failures.push(format!(
                    "{arch} {}: no loop moves only 16-byte packs",
                    f.name
                ));
            }
            // Each phase over the row is one loop of 16-byte packs: a phase whose loop turned
            // narrow (say LDS.128 split into LDS.32) would leave the steady set, so pin them.
            let phases = match (config.op, config.family) {
                (Op::LogSumExp, Family::Online { .. }) => 1, // reads x once
                // LLVM unswitches the one-lane logsumexp vector row loop on the invariant
                // cols > 0 test (the scalar kernel hides it): two loops, both 16-byte.
                (Op::LogSumExp, Family::Warp { width: 1, .. }) => 2,
                // Backward: load y and dy + their sum, write dx.
                (op, Family::Block { .. }) if op.is_backward() => 2,
                (_, Family::Block { .. }) => 3, // load + max, sum of exp, write
                (_, Family::Online { .. }) => 2, // (max, sum), write
                // Cross-entropy: the plain and softcap variants of the pass (the weighted
                // ones gather weights narrowly), and grad's zero writer for ignored rows.
                (
                    Op::CrossEntropy,
                    Family::CrossEntropy {
                        stage: CrossEntropyStage::Grad,
                    },
                ) => 3,
                // On chip: both passes' plain and softcap loops, and the zero writer.
                (
                    Op::CrossEntropy,
                    Family::CrossEntropy {
                        stage: CrossEntropyStage::OnChip,
                    },
                ) => 5,
                (Op::CrossEntropy, _) => 2,
                _ => 1,
            };
            let wide = steady_loops(f).len();
            if wide != phases {
                failures.push(format!(
                    "{arch} {}: {wide} loops move only 16-byte packs, expected {phases} (one a phase)",
                    f.name
                ));
            }
            // A loop that moves 16-byte packs of global memory moves nothing narrower there
            // (NVVM's split stores showed up as 4 STG.E beside an LDG.128).
            for c in all_loops(f).iter().filter(|c| c.has_wide_global()) {
                let mut narrow = c.narrow_global();
                if is_cross_entropy_pass(&config) {
                    // The f32 class-weight gather of weighted smoothing (4-byte loads beside
                    // 16-byte logits). Stores must still be wide.
                    narrow.retain(|(k, _)| !matches!(k, Class::GlobalLoad(4)));
                }
                if !narrow.is_empty() {
                    let list: Vec<String> = narrow
                        .iter()
                        .map(|(k, n)| format!("{n} x {}", k.label()))
                        .collect();
                    failures.push(format!(
                        "{arch} {}: {} in a steady loop",
                        f.name,
                        list.join(", ")
                    ));
                }
            }
        }
        assert!(
            failures.is_empty(),
            "narrow global accesses:\n{}",
            failures.join("\n")
        );
    }
}

#[test]
fn instructions_per_element_are_within_budget() {
    let mut failures = Vec::new();
    for arch in ARCHS {
        let Some(functions) = sass_for(arch) else {
            continue; // (an architecture the image lacks: the others are still checked)
        };
        for f in &functions {
            let config = config_of(&f.name);
            if !has_element_loop(&config) {
                continue; // no loop over elements (see every_kernel_has_a_steady_loop)
            }
            if is_cross_entropy_pass(&config) {
                let worst = steady_loops(f)
                    .iter()
                    .map(|c| c.per_element())
                    .fold(0.0, f64::max);
                if worst > SOFTCAP_BUDGET {
                    failures.push(format!(
                        "{arch} {}: a variant loop takes {worst:.3} warp instructions per element (budget {SOFTCAP_BUDGET:.2})",
                        f.name
                    ));
                }
            }
            let measured = per_element(f);
            let allowed = budget(&config_of(&f.name));
            let listed = OVER_BUDGET
                .iter()
                .find(|(a, k, _)| *a == arch && *k == f.name)
                .map(|(_, _, v)| *v);
            match listed {
                None if measured > allowed => failures.push(format!(
                    "{arch} {}: {measured:.3} warp instructions per element (budget {allowed:.2})",
                    f.name
                )),
                Some(recorded) if measured > recorded + 0.005 => failures.push(format!(
                    "{arch} {}: {measured:.3}, worse than the recorded {recorded:.3}",
                    f.name
                )),
                Some(_) if measured <= allowed => failures.push(format!(
                    "{arch} {}: {measured:.3} is within budget now: remove it from OVER_BUDGET",
                    f.name
                )),
                _ => {}
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every kernel has a steady state to measure: a kernel whose loops all fell out of the census
/// would pass the budgets with nothing counted.
#[test]
fn every_kernel_has_a_steady_loop() {
    for arch in ARCHS {
        let Some(functions) = sass_for(arch) else {
            continue; // (an architecture the image lacks: the others are still checked)
        };
        for f in &functions {
            let config = config_of(&f.name);
            if !has_element_loop(&config) {
                continue; // one value a row (or a batch) from per-row values
            }
            assert!(
                !steady_loops(f).is_empty(),
                "{arch} {}: no steady-state loop",
                f.name
            );
        }
    }
}

#[test]
fn no_kernel_uses_local_memory() {
    for arch in ARCHS {
        let Some(functions) = sass_for(arch) else {
            continue; // (an architecture the image lacks: the others are still checked)
        };
        for f in &functions {
            let local = f
                .instructions
                .iter()
                .filter(|i| sass::classify(i) == Class::Local)
                .count();
            assert_eq!(
                local, 0,
                "{arch} {}: {local} local-memory instructions",
                f.name
            );
        }
    }
}

/// The shapes of the issue-7 sweep: each listed row length with enough rows for 64 MB of input,
/// plus the named shapes (a vocabulary row, attention rows, very long rows).
fn sweep_shapes(dtype: cuda_softmax::Dtype) -> Vec<(usize, usize)> {
    let cols = [
        16, 32, 64, 128, 256, 512, 1024, 1152, 2048, 2049, 4096, 8192, 16384, 32768, 65536,
        131_072, 262_144,
    ];
    let bytes = 64 << 20;
    let mut shapes: Vec<(usize, usize)> = cols
        .iter()
        .map(|&c| (bytes / (c * dtype.size_bytes()), c))
        .collect();
    shapes.extend([
        (1, 32_000),
        (8, 32_000),
        (32, 128_256),
        (1, 262_144),
        (4096, 128),
        (4096, 512),
        (4096, 2048),
        (4096, 8192),
    ]);
    shapes
}

/// Per stage of a plan: (kernel, bytes in flight per SM, bytes each thread issues before first
/// use in its weakest loading loop).
fn in_flight(
    plan: &cuda_softmax::tools::planner::LaunchPlan,
    functions: &[Function],
    resources: &std::collections::BTreeMap<String, (u32, u32)>,
    device: &cuda_softmax::tools::planner::DeviceLimits,
) -> Vec<(String, f64, u32)> {
    use cuda_softmax::tools::occupancy::{KernelResources, SmLimits, bytes_in_flight_per_sm};
    plan.stages
        .iter()
        .map(|s| {
            let name = s.kernel.name();
            let f = functions
                .iter()
                .find(|f| f.name == name)
                .unwrap_or_else(|| panic!("{name} missing from the SASS"));
            let loops: Vec<_> = sass::innermost_loops(f)
                .into_iter()
                .filter(|&l| {
                    let (input, output) = element_bytes(&f.name);
                    let c = sass::census(f, l, input, output, inputs(&f.name));
                    c.global_load_bytes() > 0 && (!has_vector_path(&s.kernel) || all_wide(&c))
                })
                .collect();
            let per_thread = loops
                .iter()
                .map(|&l| sass::bytes_before_first_use(f, l))
                .min()
                .unwrap_or(0);
            let (registers, static_smem) = resources[&name];
            let k = KernelResources {
                threads: s.block,
                registers,
                static_smem,
                dynamic_smem: s.shared_mem_bytes,
            };
            let grid = u64::from(s.grid.0) * u64::from(s.grid.1);
            let bytes = bytes_in_flight_per_sm(&k, grid, per_thread, device, &SmLimits::HOPPER);
            (name, bytes, per_thread)
        })
        .collect()
}

/// At least 16 KB of loads in flight per SM on H100/H200 limits for every plan of the sweep,
/// or the whole input when it is smaller: below that, latency bounds the stream (Little's law,
/// see src/tools/occupancy.rs). Prints the predicted-performance table (docs/performance.md).
#[test]
fn plans_keep_enough_loads_in_flight() {
    use cuda_softmax::tools::planner::{DeviceLimits, SoftmaxProblem, plan_softmax};
    let Some(functions) = sass_for("sm_90") else {
        return;
    };
    let Some(report) = image::ptxas_report() else {
        assert!(!required(), "the build's ptxas report is missing");
        return;
    };
    let resources = sass::ptxas_resources(&report, "sm_90");
    let h100 = DeviceLimits::H100;
    // Bytes per SM a stream needs in flight: bandwidth / SMs x ~0.8 us latency (H100 about
    // 3.0 TB/s, H200 about 4.3 TB/s, 132 SMs each).
    let needed = [16.0 * 1024.0, 23.0 * 1024.0];
    let mut failures = Vec::new();
    println!(
        "{:<6} {:>8} x {:<7} {:<58} {:>9} {:>6} {:>8} {:>8}",
        "dtype", "rows", "cols", "kernels", "KB/SM", "B/thr", "H100", "H200"
    );
    for dtype in cuda_softmax::Dtype::ALL {
        for (rows, cols) in sweep_shapes(dtype) {
            let problem = SoftmaxProblem {
                op: cuda_softmax::tools::planner::Op::Softmax,
                rows,
                cols,
                dtype,
                aligned16: true,
            };
            let plan = plan_softmax(&problem, &h100);
            let stages = in_flight(&plan, &functions, &resources, &h100);
            let input = (rows * cols * dtype.size_bytes()) as f64;
            let floor = (16.0 * 1024.0f64).min(input / f64::from(h100.sm_count));
            let weakest = stages.iter().map(|s| s.1).fold(f64::INFINITY, f64::min);
            if weakest < floor {
                failures.push(format!(
                    "{} {rows}x{cols}: {:.1} KB in flight per SM (need {:.1}): {stages:?}",
                    dtype.name(),
                    weakest / 1024.0,
                    floor / 1024.0
                ));
            }
            // Predicted fraction of a device-to-device copy: traffic (two-pass plans read x
            // twice) and latency (too little in flight), not launch overhead or tails.
            let traffic = if plan.stages.len() > 1
                || matches!(plan.stages[0].kernel.family, Family::Online { .. })
            {
                1.5
            } else {
                1.0
            };
            let predict = |need: f64| (weakest / need).min(1.0) / traffic;
            let names: Vec<String> = stages.iter().map(|s| s.0.clone()).collect();
            println!(
                "{:<6} {rows:>8} x {cols:<7} {:<58} {:>9.1} {:>6} {:>8.2} {:>8.2}",
                dtype.name(),
                names.join("+"),
                weakest / 1024.0,
                stages.iter().map(|s| s.2).min().unwrap_or(0),
                predict(needed[0]),
                predict(needed[1]),
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
