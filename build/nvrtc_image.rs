//! The image with the pinned CUDA 12 toolchain: NVRTC -> PTX a PTX architecture, ptxas -> SASS
//! an architecture, both on parallel threads; nvFatbin -> one fatbin.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::gpu_image::{
    ImageInfo, NVRTC_FLAGS, PTXAS_FLAGS, Targets, cuda_for_ptx_isa, driver_for_cuda, produced,
    ptx_isa, run,
};
use crate::toolchain12::{self, Toolchain12};
use crate::{compile_threads, kernel_entries, nvrtc, ptx_variants, stage_times};

/// The PTX NVRTC 12.0 compiles for SASS architecture `sm`: (architecture, variant). The
/// kernels (and the fp16/bf16 headers) choose code by __CUDA_ARCH__ at 800 (L2 eviction
/// policies) and 900, and NVRTC 12.0 knows nothing above compute_90, whose PTX ptxas 12.9
/// assembles for sm_100/sm_120. sm_120's PTX is the compute_90 PTX with launch bounds of its own
/// (a register budget: build/ptx_variants.rs), named "+sm120".
pub(crate) fn nvrtc_ptx_arch(sm: u32) -> (u32, String) {
    match sm {
        ..80 => (75, String::new()),
        80..90 => (80, String::new()),
        120.. => (90, "+sm120".to_string()),
        _ => (90, String::new()),
    }
}

/// The image with the pinned CUDA 12 toolchain: NVRTC -> PTX per PTX architecture, ptxas ->
/// SASS per architecture (in parallel), nvFatbin -> one fatbin.
pub(crate) fn build_with_nvrtc(
    t: &Toolchain12,
    targets: &Targets,
    kernels_dir: &Path,
    sources: &[PathBuf],
    out: &Path,
    lineinfo: bool,
) -> Result<ImageInfo, String> {
    let toolkit = t.describe()?;
    let (archs, ptx_arch) = targets;
    let ptx_arch = *ptx_arch;
    let mut ptx_archs: Vec<(u32, String)> = archs
        .iter()
        .map(|(a, suffix)| {
            if suffix.is_empty() {
                nvrtc_ptx_arch(*a)
            } else {
                (*a, suffix.clone())
            }
        })
        .chain([(ptx_arch.min(90), String::new())])
        .collect();
    ptx_archs.sort();
    ptx_archs.dedup();
    // What NVRTC compiles: the plain architectures, and the one each "+variant" derives from.
    let mut nvrtc_archs: Vec<(u32, String)> = ptx_archs
        .iter()
        .map(|(a, suffix)| {
            if suffix.starts_with('+') {
                (*a, String::new())
            } else {
                (*a, suffix.clone())
            }
        })
        .collect();
    nvrtc_archs.sort();
    nvrtc_archs.dedup();

    let mut unity = String::new();
    for s in sources {
        unity += &format!("#include \"{}\"\n", s.display());
    }
    let threads = compile_threads();

    // NVRTC: one program per PTX architecture, compiled in parallel (programs are independent).
    let compile_ptx = |(arch, suffix): &(u32, String)| -> Result<String, String> {
        let nvrtc = nvrtc::Nvrtc::open(&t.nvrtc)?;
        let mut options = vec![format!("--gpu-architecture=compute_{arch}{suffix}")];
        options.extend(NVRTC_FLAGS.iter().map(|f| f.to_string()));
        options.extend([
            format!("-I{}", kernels_dir.display()),
            format!("-I{}", t.include.display()),
        ]);
        if lineinfo {
            options.push("-lineinfo".into());
        }
        stage_times::timed(format!("NVRTC compute_{arch}{suffix}"), || {
            nvrtc.compile_to_ptx(&unity, "cuda_softmax_kernels.cu", &options)
        })
    };
    let nvrtc_texts = parallel_map(&nvrtc_archs, threads, compile_ptx)?;
    // Every PTX architecture's text: compiled, or derived from the one it varies.
    let ptx_texts = ptx_archs
        .iter()
        .map(|(arch, suffix)| {
            let base = |a: &(u32, String)| {
                nvrtc_archs
                    .iter()
                    .position(|b| b == a)
                    .map(|i| &nvrtc_texts[i])
                    .ok_or("no PTX compiled for an architecture")
            };
            match suffix.as_str() {
                "+sm120" => stage_times::timed("PTX for sm_120, derived from compute_90", || {
                    ptx_variants::sm120_ptx(
                        base(&(*arch, String::new()))?,
                        &kernel_entries::sm120_budget_entries(),
                    )
                }),
                _ => Ok(base(&(*arch, suffix.clone()))?.clone()),
            }
        })
        .collect::<Result<Vec<String>, String>>()?;

    // ptxas: one cubin per SASS architecture, from its PTX architecture's text.
    let mut ptx_files = Vec::new();
    for ((arch, suffix), text) in ptx_archs.iter().zip(&ptx_texts) {
        let path = out.join(format!("compute_{arch}{suffix}.ptx"));
        fs::write(&path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
        ptx_files.push(((*arch, suffix.clone()), path));
    }
    let assemble = |(sm, suffix): &(u32, String)| -> Result<(Vec<u8>, String), String> {
        let want = if suffix.is_empty() {
            nvrtc_ptx_arch(*sm)
        } else {
            (*sm, suffix.clone())
        };
        let ptx = &ptx_files
            .iter()
            .find(|(a, _)| *a == want)
            .ok_or("no PTX for an architecture")?
            .1;
        let cubin = out.join(format!("sm_{sm}{suffix}.cubin"));
        let mut cmd = Command::new(&t.ptxas);
        cmd.arg(format!("-arch=sm_{sm}{suffix}"))
            .args(PTXAS_FLAGS)
            .arg("-v");
        if lineinfo {
            cmd.arg("-lineinfo");
        }
        cmd.arg(ptx).arg("-o").arg(&cubin);
        let (stdout, stderr) = stage_times::timed(format!("ptxas sm_{sm}{suffix}"), || {
            run(&mut cmd, &format!("ptxas (sm_{sm}{suffix})"))
        })?;
        produced(&cubin, "ptxas", &t.ptxas)?;
        let bytes = fs::read(&cubin).map_err(|e| format!("read {}: {e}", cubin.display()))?;
        Ok((bytes, stdout + &stderr))
    };
    let cubins = parallel_map(archs, threads, assemble)?;

    let shipped_ptx = ptx_texts[ptx_archs
        .iter()
        .position(|(a, s)| *a == ptx_arch.min(90) && s.is_empty())
        .ok_or("no PTX for the shipped architecture")?]
    .clone();
    let numbered: Vec<(String, Vec<u8>)> = archs
        .iter()
        .zip(&cubins)
        .map(|((a, suffix), (bytes, _))| (format!("{a}{suffix}"), bytes.clone()))
        .collect();
    let fatbin = stage_times::timed("nvFatbin", || {
        toolchain12::fatbin(&t.nvfatbin, &numbered, (ptx_arch.min(90), &shipped_ptx))
    })?;
    fs::write(out.join("softmax.fatbin"), fatbin)
        .map_err(|e| format!("write softmax.fatbin: {e}"))?;
    fs::write(out.join("softmax.ptx"), &shipped_ptx)
        .map_err(|e| format!("write softmax.ptx: {e}"))?;
    let report: String = cubins.iter().map(|(_, r)| r.as_str()).collect();
    fs::write(out.join("ptxas.txt"), report).map_err(|e| format!("write ptxas.txt: {e}"))?;

    let ptx_version = ptx_isa(&shipped_ptx);
    // ptxas 12.x SASS loads on any 12.x driver (minor version compatibility); the PTX needs the
    // driver of its ISA (8.0: CUDA 12.0, driver 525).
    let min_driver = driver_for_cuda(12, 0)
        .max(cuda_for_ptx_isa(&ptx_version).map_or(u32::MAX, |(a, b)| driver_for_cuda(a, b)));
    let arch_list: Vec<String> = archs
        .iter()
        .map(|(a, suffix)| format!("sm_{a}{suffix}"))
        .chain([format!("compute_{}", ptx_arch.min(90))])
        .collect();
    Ok(ImageInfo {
        toolkit,
        ptx_version,
        archs: arch_list.join(","),
        min_driver,
        nvcc: String::new(),
    })
}

/// `f` over `items` on up to `threads` threads, results in order; the first error wins.
pub(crate) fn parallel_map<I: Sync, R: Send>(
    items: &[I],
    threads: usize,
    f: impl Fn(&I) -> Result<R, String> + Sync,
) -> Result<Vec<R>, String> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<Result<R, String>>>> =
        items.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..threads.min(items.len()) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = f(item);
                    *results[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
                }
            });
        }
    });
    results
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .unwrap_or_else(|| Err("a compile step did not run".into()))
        })
        .collect()
}
