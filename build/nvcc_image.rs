//! The image with a CUDA toolkit's nvcc.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::gpu_image::{
    ImageInfo, NVCC_FLAGS, Targets, cuda_for_ptx_isa, driver_for_cuda, produced, ptx_isa, run,
};
use crate::image_cache::env_value;

/// The image with a CUDA toolkit's nvcc.
pub(crate) fn build_with_nvcc(
    nvcc: &Path,
    targets: &Targets,
    kernels_dir: &Path,
    sources: &[PathBuf],
    out: &Path,
    lineinfo: bool,
) -> Result<ImageInfo, String> {
    let (version_text, _) = run(Command::new(nvcc).arg("--version"), "nvcc --version")?;
    let release = version_text
        .split("release ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("unknown")
        .to_string();
    // (architecture, suffix): SASS for each; PTX for ptx_arch (never an `a`/`f` PTX, which is
    // not forward compatible).
    let (archs, ptx_arch) = targets;
    let ptx_arch = *ptx_arch;

    let mut unity = String::new();
    for s in sources {
        unity += &format!("#include \"{}\"\n", s.display());
    }
    let unity_path = out.join("gpu_unity.cu");
    fs::write(&unity_path, unity).map_err(|e| format!("write {}: {e}", unity_path.display()))?;

    let common = |cmd: &mut Command| {
        cmd.args(NVCC_FLAGS)
            .arg(format!("-I{}", kernels_dir.display()));
        if lineinfo {
            cmd.arg("-lineinfo");
        }
        if let Some(ccbin) = env_value(&|name: &str| env::var_os(name), "NVCC_CCBIN") {
            cmd.arg("-ccbin").arg(ccbin);
        }
    };

    let fatbin = out.join("softmax.fatbin");
    let mut cmd = Command::new(nvcc);
    common(&mut cmd);
    cmd.arg("--fatbin")
        .arg("--threads")
        .arg("0")
        .arg("-Xptxas")
        .arg("-v");
    let mut ptx_listed = false;
    for (a, suffix) in archs.iter() {
        if *a == ptx_arch && suffix.is_empty() {
            cmd.arg(format!(
                "-gencode=arch=compute_{a},code=[sm_{a},compute_{a}]"
            ));
            ptx_listed = true;
        } else {
            cmd.arg(format!(
                "-gencode=arch=compute_{a}{suffix},code=sm_{a}{suffix}"
            ));
        }
    }
    if !ptx_listed {
        cmd.arg(format!(
            "-gencode=arch=compute_{ptx_arch},code=compute_{ptx_arch}"
        ));
    }
    cmd.arg("-o").arg(&fatbin).arg(&unity_path);
    let (_, ptxas_report) = run(&mut cmd, "nvcc (fatbin)")?;
    produced(&fatbin, "nvcc (fatbin)", nvcc)?;
    fs::write(out.join("ptxas.txt"), &ptxas_report).map_err(|e| format!("write ptxas.txt: {e}"))?;

    let ptx = out.join("softmax.ptx");
    let mut cmd = Command::new(nvcc);
    common(&mut cmd);
    cmd.arg("-ptx")
        .arg(format!("-arch=compute_{ptx_arch}"))
        .arg("-o")
        .arg(&ptx)
        .arg(&unity_path);
    run(&mut cmd, "nvcc (ptx)")?;
    produced(&ptx, "nvcc (ptx)", nvcc)?;
    let ptx_text = fs::read_to_string(&ptx).map_err(|e| format!("read {}: {e}", ptx.display()))?;
    let ptx_version = ptx_isa(&ptx_text);

    // SASS of toolkit major M needs a driver of major M; the PTX needs the toolkit's own release.
    let (major, minor) = release
        .split_once('.')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .unwrap_or((99, 0));
    let min_driver = driver_for_cuda(major, 0).max(
        cuda_for_ptx_isa(&ptx_version).map_or(driver_for_cuda(major, minor), |(a, b)| {
            driver_for_cuda(a, b)
        }),
    );
    let arch_list: Vec<String> = archs
        .iter()
        .map(|(a, suffix)| format!("sm_{a}{suffix}"))
        .chain([format!("compute_{ptx_arch}")])
        .collect();
    Ok(ImageInfo {
        toolkit: format!("nvcc {release}"),
        ptx_version,
        archs: arch_list.join(","),
        min_driver,
        nvcc: nvcc.display().to_string(),
    })
}
