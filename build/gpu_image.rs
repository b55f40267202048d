//! The GPU image: the compiler and targets, the cache key, the compile (build/nvcc_image.rs or
//! build/nvrtc_image.rs) on a miss, the zstd compression, and what the crate is told about it.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::image_cache::{self, env_value};
use crate::nvcc::{image_targets, nvcc_known_archs, ptxas_known_archs};
use crate::nvcc_image::build_with_nvcc;
use crate::nvrtc_image::build_with_nvrtc;
use crate::toolchain12::Toolchain12;
use crate::{cache_paths, kernel_entries, nvrtc, ptx_variants, stage_times};

/// The flags build.rs gives each compiler (besides targets, outputs and -lineinfo). They are
/// part of the image cache key, so a change here is a new image.
pub(crate) const NVCC_FLAGS: [&str; 2] = ["-std=c++17", "-O3"];

/// (-default-device: lambdas and helpers without __device__ are device code, as nvcc infers.)
pub(crate) const NVRTC_FLAGS: [&str; 2] = ["-std=c++17", "-default-device"];

pub(crate) const PTXAS_FLAGS: [&str; 1] = ["-O3"];

/// Bump when the way build.rs turns sources into an image changes in a way the flags above and
/// the other key inputs do not show (a new step, another layout of the fatbin).
pub(crate) const IMAGE_RECIPE: &str = "3";

/// What builds the GPU image.
pub(crate) enum Compiler {
    /// A CUDA toolkit's nvcc.
    Nvcc(PathBuf),
    /// The pinned CUDA 12 toolchain: NVRTC + ptxas + nvFatbin.
    Nvrtc(Toolchain12),
}

/// Runs a tool; its stdout and stderr on success, else what failed.
pub(crate) fn run(cmd: &mut Command, what: &str) -> Result<(String, String), String> {
    let output = cmd
        .output()
        .map_err(|e| format!("{what}: could not run {:?}: {e}", cmd.get_program()))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(12).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!(
            "{what} failed ({}): {}",
            output.status,
            tail.join("\n")
        ));
    }
    Ok((stdout, stderr))
}

/// A file the compiler should have written, non-empty.
pub(crate) fn produced(path: &Path, what: &str, compiler: &Path) -> Result<(), String> {
    match fs::metadata(path) {
        Ok(m) if m.len() > 0 => Ok(()),
        _ => Err(format!(
            "{what}: {} exited successfully but did not write {}; check that it is a working compiler (NVCC, \
             CUDA_HOME, or rerun scripts/install-nvcc.sh)",
            compiler.display(),
            path.display()
        )),
    }
}

/// What an image is (OUT_DIR/image.txt, cached with it): `key=value` lines.
pub(crate) struct ImageInfo {
    /// "nvcc 13.0" or "NVRTC 12.0, ptxas 12.9".
    pub(crate) toolkit: String,
    pub(crate) ptx_version: String,
    /// e.g. sm_75,...,sm_120,compute_75
    pub(crate) archs: String,
    /// The oldest driver (e.g. 525) that loads the image on every GPU it has SASS for.
    pub(crate) min_driver: u32,
    /// The nvcc that built it (the SASS gate looks for cuobjdump beside it), if any.
    pub(crate) nvcc: String,
}

impl ImageInfo {
    pub(crate) fn to_text(&self) -> String {
        format!(
            "toolkit={}\nptx_version={}\narchs={}\nmin_driver={}\nnvcc={}\n",
            self.toolkit, self.ptx_version, self.archs, self.min_driver, self.nvcc
        )
    }

    pub(crate) fn from_text(text: &str) -> Option<ImageInfo> {
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
                .map(str::to_string)
        };
        Some(ImageInfo {
            toolkit: get("toolkit")?,
            ptx_version: get("ptx_version")?,
            archs: get("archs")?,
            min_driver: get("min_driver")?.parse().ok()?,
            nvcc: get("nvcc")?,
        })
    }
}

/// The oldest driver for an image whose newest part needs CUDA `major.minor` (the PTX's
/// toolkit for the JIT; cubins need the driver's major version only: minor version
/// compatibility).
pub(crate) fn driver_for_cuda(major: u32, minor: u32) -> u32 {
    match (major, minor) {
        (..=11, _) => 450,
        (12, 0) => 525,
        (12, 1) => 530,
        (12, 2) => 535,
        (12, 3) => 545,
        (12, 4) => 550,
        (12, 5) => 555,
        (12, 6) => 560,
        (12, 7..=8) => 570,
        (12, _) => 575,
        (13, 0) => 580,
        _ => 580 + 5 * minor,
    }
}

/// The CUDA release a PTX ISA version belongs to (ISA 8.x is CUDA 12.x, 9.x is 13.x).
pub(crate) fn cuda_for_ptx_isa(isa: &str) -> Option<(u32, u32)> {
    let (major, minor) = isa.split_once('.')?;
    let (major, minor): (u32, u32) = (major.parse().ok()?, minor.parse().ok()?);
    Some((major + 4, minor))
}

/// `.version` of a PTX text.
pub(crate) fn ptx_isa(ptx: &str) -> String {
    ptx.lines()
        .find_map(|l| l.trim().strip_prefix(".version "))
        .unwrap_or("unknown")
        .trim()
        .to_string()
}

/// (SASS architectures with their suffix, the PTX architecture).
pub(crate) type Targets = (Vec<(u32, String)>, u32);

/// The image's targets for this compiler: every base architecture plus the newer ones it knows,
/// or the one CUDA_COMPUTE_CAP names (empty is unset), which must be one it lists.
pub(crate) fn compiler_targets(compiler: &Compiler) -> Result<Targets, String> {
    let cap = env_value(&|name: &str| env::var_os(name), "CUDA_COMPUTE_CAP");
    match compiler {
        Compiler::Nvcc(nvcc) => {
            let (listed, _) = run(
                Command::new(nvcc).arg("--list-gpu-arch"),
                "nvcc --list-gpu-arch",
            )?;
            let name = format!("nvcc ({})", nvcc.display());
            image_targets(cap.as_deref(), &nvcc_known_archs(&listed), &name)
        }
        Compiler::Nvrtc(t) => {
            let (help, _) = run(Command::new(&t.ptxas).arg("--help"), "ptxas --help")?;
            // An arch-specific target (90a) is compiled by NVRTC for that very architecture:
            // it must know it too (NVRTC 12.0 stops at 90).
            let nvrtc_archs = nvrtc::Nvrtc::open(&t.nvrtc)?.supported_archs()?;
            let known: Vec<(u32, String)> = ptxas_known_archs(&help)
                .into_iter()
                .filter(|(n, s)| s.is_empty() || nvrtc_archs.contains(n))
                .collect();
            image_targets(
                cap.as_deref(),
                &known,
                "the pinned CUDA 12 toolchain (NVRTC + ptxas)",
            )
        }
    }
}

pub(crate) fn build_gpu_image(
    compiler: &Compiler,
    kernels: &Path,
    sources: &[PathBuf],
    out: &Path,
) -> Result<(), String> {
    let lookup = |name: &str| env::var_os(name);
    let lineinfo = env_value(&lookup, "CUDA_SOFTMAX_LINEINFO").is_some_and(|v| v == "1");
    let targets = compiler_targets(compiler)?;
    // Everything the image depends on: the cache key.
    let (archs, ptx_arch) = &targets;
    let arch_list: Vec<String> = archs.iter().map(|(a, s)| format!("sm_{a}{s}")).collect();
    // The generated entry points (from the registry, outside kernels/) are part of the key.
    let mut unit_digests = String::new();
    for unit in sources {
        let text = fs::read(unit).map_err(|e| format!("read {}: {e}", unit.display()))?;
        unit_digests += &cache_paths::digest(&text);
    }
    let mut settings: Vec<(&str, String)> = vec![
        ("kernel entries", unit_digests),
        ("recipe", IMAGE_RECIPE.to_string()),
        ("lineinfo", u8::from(lineinfo).to_string()),
        (
            "targets",
            format!("{} + compute_{ptx_arch}", arch_list.join(",")),
        ),
        (
            "zstd",
            format!("level {IMAGE_ZSTD_LEVEL}, window 2^{IMAGE_ZSTD_WINDOW_LOG}"),
        ),
    ];
    // The compiler's identity (its path and what its --version / nvrtcVersion say) and flags.
    match compiler {
        Compiler::Nvcc(nvcc) => {
            let (version, _) = run(Command::new(nvcc).arg("--version"), "nvcc --version")?;
            settings.extend([
                ("compiler", format!("nvcc {}", nvcc.display())),
                ("compiler version", version),
                ("nvcc flags", NVCC_FLAGS.join(" ")),
            ]);
        }
        Compiler::Nvrtc(t) => settings.extend([
            // sm_120's PTX is derived (build/ptx_variants.rs): its rule and kernels.
            (
                "sm_120 launch bounds",
                format!(
                    "{} for {}",
                    ptx_variants::sm120_rule(),
                    kernel_entries::sm120_budget_entries().join(",")
                ),
            ),
            ("compiler", format!("nvrtc+ptxas {}", t.root.display())),
            ("compiler version", t.describe()?),
            ("nvrtc flags", NVRTC_FLAGS.join(" ")),
            ("ptxas flags", PTXAS_FLAGS.join(" ")),
        ]),
    }
    let inputs = image_cache::image_inputs(
        &settings,
        kernels,
        &lookup,
        env::vars_os().map(|(name, _)| name),
    )?;
    let cache = image_cache::dir(&lookup);
    let cached = image_cache::fetch_or_compile(
        cache.as_deref(),
        &inputs,
        out,
        || {
            let info = match compiler {
                Compiler::Nvcc(nvcc) => {
                    build_with_nvcc(nvcc, &targets, kernels, sources, out, lineinfo)?
                }
                Compiler::Nvrtc(t) => {
                    build_with_nvrtc(t, &targets, kernels, sources, out, lineinfo)?
                }
            };
            stage_times::timed("zstd", || compress_image(out))?;
            fs::write(out.join("image.txt"), info.to_text())
                .map_err(|e| format!("write image.txt: {e}"))
        },
        &mut |warning| println!("cargo::warning={warning}"),
    )?;
    let key = inputs.key();
    if cached {
        stage_times::note(format!(
            "GPU image from the cache (key {key}): nothing compiled"
        ));
    }
    let text =
        fs::read_to_string(out.join("image.txt")).map_err(|e| format!("read image.txt: {e}"))?;
    let info = ImageInfo::from_text(&text)
        .ok_or("image.txt is incomplete: remove the image cache entry")?;
    if info.min_driver > 525 {
        let who = match compiler {
            Compiler::Nvcc(nvcc) => format!("{} ({})", info.toolkit, nvcc.display()),
            Compiler::Nvrtc(_) => info.toolkit.clone(),
        };
        println!(
            "cargo::warning=the GPU image is built with {who}: it loads only on NVIDIA drivers >= {} (PTX ISA {}). \
             For drivers >= 525, unset NVCC/CUDA_HOME/CUDA_PATH (or take nvcc off PATH) and run \
             scripts/install-nvcc.sh: build.rs then uses its pinned CUDA 12 toolchain.",
            info.min_driver, info.ptx_version
        );
    }
    println!("cargo::rustc-cfg=cs_cuda_image");
    // On ELF targets the image is assembled into the object file (src/runtime/image.rs): a Rust static
    // would also copy it into the crate's metadata. Its symbols are named by the image and the
    // OUT_DIR, so two builds of the crate in one program cannot clash.
    let out_text = out.display().to_string();
    let elf = env::var("CARGO_CFG_TARGET_OBJECT_FORMAT").is_ok_and(|f| f == "elf")
        || env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    if elf && !out_text.contains(['"', '\\', '\n']) {
        let mut symbol = cache_paths::ContentHash::new();
        symbol.add(key.as_bytes()).add(out_text.as_bytes());
        println!("cargo::rustc-cfg=cs_image_incbin");
        println!(
            "cargo::rustc-env=CS_IMAGE_SYMBOL=cuda_softmax_image_{}",
            symbol.hex()
        );
    }
    println!("cargo::rustc-env=CS_TOOLKIT_VERSION={}", info.toolkit);
    println!("cargo::rustc-env=CS_PTX_VERSION={}", info.ptx_version);
    println!("cargo::rustc-env=CS_IMAGE_ARCHS={}", info.archs);
    println!("cargo::rustc-env=CS_IMAGE_MIN_DRIVER={}", info.min_driver);
    println!("cargo::rustc-env=CS_IMAGE_DIR={}", out.display());
    println!("cargo::rustc-env=CS_NVCC={}", info.nvcc);
    println!("cargo::rustc-env=CS_IMAGE_CACHE_HIT={}", cached);
    Ok(())
}

/// zstd level the image is compressed with: 17 with a 128 MiB window keeps all six
/// architectures and the PTX (about 95 MB as the driver reads them) under 9 MB. The six
/// cubins are mostly alike, so one long-window stream finds what they share; fatbin compression
/// a 525 driver reads (LZ4) left 31.6 MB.
pub(crate) const IMAGE_ZSTD_LEVEL: i32 = 17;

pub(crate) const IMAGE_ZSTD_WINDOW_LOG: u32 = 27;

/// OUT_DIR/softmax.fatbin -> OUT_DIR/softmax.fatbin.zst (what the crate embeds; src/runtime/image.rs
/// inflates it once per process). The raw fatbin is removed: it is large, and not cached.
pub(crate) fn compress_image(out: &Path) -> Result<(), String> {
    let raw_path = out.join("softmax.fatbin");
    let raw = fs::read(&raw_path).map_err(|e| format!("read {}: {e}", raw_path.display()))?;
    let mut compressed = Vec::new();
    let mut encoder = zstd::stream::Encoder::new(&mut compressed, IMAGE_ZSTD_LEVEL)
        .map_err(|e| format!("zstd: {e}"))?;
    encoder
        .long_distance_matching(true)
        .and_then(|_| encoder.window_log(IMAGE_ZSTD_WINDOW_LOG))
        .and_then(|_| encoder.set_pledged_src_size(Some(raw.len() as u64)))
        .and_then(|_| encoder.include_contentsize(true))
        .map_err(|e| format!("zstd parameters: {e}"))?;
    std::io::Write::write_all(&mut encoder, &raw).map_err(|e| format!("zstd: {e}"))?;
    encoder.finish().map_err(|e| format!("zstd: {e}"))?;
    let path = out.join("softmax.fatbin.zst");
    fs::write(&path, &compressed).map_err(|e| format!("write {}: {e}", path.display()))?;
    fs::remove_file(&raw_path).map_err(|e| format!("remove {}: {e}", raw_path.display()))?;
    Ok(())
}
