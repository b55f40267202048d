//! build.rs's nvcc discovery (build/nvcc.rs, compiled here as well): every broken toolkit is a
//! message naming the file and what to do, never a panic; candidates found by search that do not
//! run are skipped. Stand-in "nvcc" programs are shell scripts the test writes itself.

#[path = "../build/cache_paths.rs"]
#[allow(dead_code)]
mod cache_paths;
#[path = "../build/image_cache.rs"]
#[allow(dead_code)]
mod image_cache;
#[path = "../build/nvcc.rs"]
#[allow(dead_code)]
mod nvcc;
#[path = "../build/ptx_variants.rs"]
#[allow(dead_code)]
mod ptx_variants;

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use image_cache::{FILES, Fetch, KeyInputs, fetch, fetch_or_compile, image_inputs};
use nvcc::{
    check_nvcc, find_nvcc, image_targets, nvcc_known_archs, parse_compute_cap, ptxas_known_archs,
};

/// Tests that write stand-in programs and run them hold this: a script written while another
/// test thread forks a child can still be open in that child when exec'd (ETXTBSY, "Text file
/// busy"), a flake seen on 2 cores.
static WRITE_AND_RUN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    WRITE_AND_RUN.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fresh folder under the target dir for this test's stand-ins.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cs-build-script-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    dir
}

/// Writes an executable shell script at `path`.
fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn find(vars: &[(&str, &Path)]) -> Result<Option<PathBuf>, String> {
    let map: HashMap<String, OsString> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_os_str().to_owned()))
        .collect();
    // No PATH, HOME or cache: only what the case names.
    find_nvcc(&|name: &str| map.get(name).cloned())
}

#[test]
fn an_explicit_broken_nvcc_is_one_clear_error() {
    let _serial = serial();
    let dir = scratch("explicit");
    let not_executable = dir.join("not-executable");
    std::fs::write(&not_executable, "nvcc").unwrap();
    let silent = dir.join("silent-nvcc");
    script(&silent, "exit 0"); // exits 0 and prints nothing
    let cases: [(&str, PathBuf, &str); 5] = [
        ("missing", dir.join("nope/nvcc"), "does not exist"),
        ("directory", dir.clone(), "is a directory"),
        ("not executable", not_executable, "cannot be run"),
        (
            "/bin/false",
            PathBuf::from("/bin/false"),
            "failed on --version",
        ),
        ("silent", silent, "names no release"),
    ];
    for (what, path, expected) in cases {
        let e = find(&[("NVCC", &path)]).unwrap_err();
        assert!(e.contains(&path.display().to_string()), "{what}: {e}");
        assert!(e.contains(expected), "{what}: {e}");
        assert!(e.contains("Point NVCC at a working nvcc"), "{what}: {e}");
    }
    // CUDA_HOME naming a folder without a working bin/nvcc.
    let e = find(&[("CUDA_HOME", &dir)]).unwrap_err();
    assert!(
        e.contains("CUDA_HOME=") && e.contains("does not exist"),
        "{e}"
    );
}

#[test]
fn a_working_nvcc_is_found_and_broken_search_candidates_are_skipped() {
    let _serial = serial();
    let dir = scratch("search");
    let good = dir.join("bin/nvcc");
    script(
        &good,
        "echo 'Cuda compilation tools, release 13.0, V13.0.88'",
    );
    assert_eq!(check_nvcc(&good), Ok(()));
    assert_eq!(find(&[("NVCC", &good)]), Ok(Some(good.clone())));
    assert_eq!(find(&[("CUDA_HOME", &dir)]), Ok(Some(good.clone())));
    // PATH: a broken nvcc first (skipped with a warning), a working one after it.
    let broken_dir = scratch("search-broken");
    script(&broken_dir.join("bin/nvcc"), "exit 3");
    let path = std::env::join_paths([broken_dir.join("bin"), dir.join("bin")]).unwrap();
    assert_eq!(find(&[("PATH", Path::new(&path))]), Ok(Some(good)));
    // Only broken candidates: none found (a warning each), not an error.
    let path = std::env::join_paths([broken_dir.join("bin")]).unwrap();
    assert_eq!(find(&[("PATH", Path::new(&path))]), Ok(None));
    // CUDA_SOFTMAX_NO_GPU_IMAGE=1 (or its old name CUDA_SOFTMAX_NO_NVCC=1) wins over everything.
    for var in ["CUDA_SOFTMAX_NO_GPU_IMAGE", "CUDA_SOFTMAX_NO_NVCC"] {
        assert_eq!(
            find(&[(var, Path::new("1")), ("NVCC", Path::new("/bin/false"))]),
            Ok(None),
            "{var}"
        );
        assert_eq!(
            find(&[(var, Path::new("0")), ("NVCC", &dir.join("bin/nvcc"))]),
            Ok(Some(dir.join("bin/nvcc"))),
            "{var}=0 is not the option"
        );
    }
}

#[test]
fn compute_capabilities_are_parsed_or_clearly_rejected() {
    let _serial = serial();
    assert_eq!(parse_compute_cap("90"), Ok((90, String::new())));
    assert_eq!(parse_compute_cap("8.6"), Ok((86, String::new())));
    assert_eq!(parse_compute_cap("90a"), Ok((90, "a".into())));
    assert_eq!(parse_compute_cap("100a"), Ok((100, "a".into())));
    assert_eq!(parse_compute_cap("100f"), Ok((100, "f".into())));
    assert_eq!(parse_compute_cap(" 12.0 "), Ok((120, String::new())));
    assert_eq!(parse_compute_cap("10.0a"), Ok((100, "a".into())));
    // (7.5.0 was read as 750, and ten digits were left to the compiler.)
    for bad in [
        "",
        "abc",
        "9x",
        "70",
        "90b",
        "sm_90",
        "7.5.0",
        "4294967295",
        "99999",
        "7.55",
        ".5",
        "9.",
        "a",
        "1.2.3a",
    ] {
        let e = parse_compute_cap(bad).unwrap_err();
        assert!(e.contains("CUDA_COMPUTE_CAP="), "{bad}: {e}");
    }
}

/// What `nvcc --list-gpu-arch` (CUDA 13.0) and `ptxas --help` (12.9) print, in part.
const NVCC_LIST: &str = "compute_75\ncompute_80\ncompute_86\ncompute_87\ncompute_89\ncompute_90\n\
                         compute_100\ncompute_110\ncompute_120\n";
const PTXAS_HELP: &str = "Allowed values for this option:  'compute_100','compute_90a','lto_90',\n\
                          'sm_100','sm_100a','sm_100f','sm_120','sm_75','sm_80','sm_86','sm_87',\n\
                          'sm_89','sm_90','sm_90a'";

/// CUDA_COMPUTE_CAP must name an architecture the toolchain lists: "999" (a valid spelling)
/// is a clear error naming what it does build for, not a compiler failure minutes later.
#[test]
fn compute_capabilities_outside_the_toolchain_are_build_errors() {
    let nvcc = nvcc_known_archs(NVCC_LIST);
    let ptxas = ptxas_known_archs(PTXAS_HELP);
    assert!(ptxas.contains(&(90, "a".into())) && ptxas.contains(&(120, String::new())));
    assert!(
        !ptxas.iter().any(|(n, _)| *n == 110),
        "compute_/lto_ values are not SASS"
    );
    for known in [&nvcc, &ptxas] {
        assert_eq!(
            image_targets(Some("90"), known, "tc"),
            Ok((vec![(90, String::new())], 90))
        );
        assert_eq!(
            image_targets(Some("9.0a"), known, "tc"),
            Ok((vec![(90, "a".into())], 90))
        );
        for bad in ["999", "100b", "7.5.0", "4294967295", "85", "110a"] {
            let bad_ok = known.iter().any(|(n, s)| format!("{n}{s}") == bad);
            if bad_ok {
                continue;
            }
            let e = image_targets(Some(bad), known, "the toolchain").unwrap_err();
            assert!(e.contains("CUDA_COMPUTE_CAP="), "{bad}: {e}");
        }
        let e = image_targets(Some("999"), known, "the toolchain").unwrap_err();
        assert!(
            e.contains("does not build for sm_999") && e.contains("90"),
            "{e}"
        );
        // Unset: every base architecture plus the newer ones known, PTX for 75.
        let (all, ptx) = image_targets(None, known, "tc").unwrap();
        assert_eq!(ptx, 75);
        assert!(all.contains(&(75, String::new())) && all.contains(&(120, String::new())));
    }
    // ptxas 12.9 lists 87 but nvcc 13 and the base list do not build 110 from ptxas 12.9.
    assert!(image_targets(Some("110"), &ptxas, "tc").is_err());
    assert!(image_targets(Some("110"), &nvcc, "tc").is_ok());
}

/// A cache folder and an OUT_DIR of the test's own.
fn cache_case(name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let dir = scratch(name);
    let kernels = dir.join("kernels");
    std::fs::create_dir_all(&kernels).unwrap();
    std::fs::write(kernels.join("softmax.cu"), "__global__ void k() {}\n").unwrap();
    std::fs::write(kernels.join("common.cuh"), "#pragma once\n").unwrap();
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    (dir.join("cache"), out, kernels)
}

/// A stand-in compiler: writes every file of an image into `out`, its bytes made of `tag`, and
/// counts its runs.
fn stand_in_compile<'a>(
    out: &'a Path,
    tag: &'a str,
    runs: &'a std::cell::Cell<u32>,
) -> impl FnOnce() -> Result<(), String> + 'a {
    move || {
        runs.set(runs.get() + 1);
        for (i, f) in FILES.iter().enumerate() {
            let body = format!("{tag} {f} ").repeat(1000 + 100 * i);
            std::fs::write(out.join(f), body).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// The key's inputs as build.rs makes them, for targets `targets` and environment `env`.
fn inputs_for(kernels: &Path, targets: &str, env: &[(&str, &str)]) -> KeyInputs {
    let map: HashMap<String, OsString> = env
        .iter()
        .map(|(k, v)| (k.to_string(), OsString::from(v)))
        .collect();
    let settings = [
        ("recipe", "2".to_string()),
        ("targets", targets.to_string()),
        ("compiler", "nvcc /stand-in/nvcc".to_string()),
    ];
    let names: Vec<OsString> = env.iter().map(|(k, _)| OsString::from(k)).collect();
    image_inputs(&settings, kernels, &|n: &str| map.get(n).cloned(), names).unwrap()
}

/// Runs the cache path build.rs takes with the stand-in compiler: (served from the cache,
/// compiler runs, warnings).
fn build(cache: &Path, out: &Path, inputs: &KeyInputs, tag: &str) -> (bool, u32, Vec<String>) {
    let runs = std::cell::Cell::new(0);
    let mut warnings = Vec::new();
    let hit = fetch_or_compile(
        Some(cache),
        inputs,
        out,
        stand_in_compile(out, tag, &runs),
        &mut |w| warnings.push(w),
    )
    .unwrap();
    (hit, runs.get(), warnings)
}

/// A stored entry is served back byte for byte without compiling; every way an entry can be
/// damaged (a truncated, zero-byte, changed or missing file, no manifest, a half-written
/// staging folder left by a killed build) is one warning line, a compile, and a sound entry
/// again; the next build is a hit with no warning.
#[test]
fn a_damaged_cache_entry_is_rebuilt_and_replaced() {
    let (cache, out, kernels) = cache_case("damaged");
    let inputs = inputs_for(&kernels, "sm_90 + compute_90", &[]);
    let entry = cache.join(inputs.key());
    assert_eq!(build(&cache, &out, &inputs, "first"), (false, 1, vec![]));
    let want: Vec<Vec<u8>> = FILES
        .iter()
        .map(|f| std::fs::read(out.join(f)).unwrap())
        .collect();
    for f in FILES {
        std::fs::remove_file(out.join(f)).unwrap();
    }
    assert_eq!(build(&cache, &out, &inputs, "second"), (true, 0, vec![]));
    for (f, bytes) in FILES.iter().zip(&want) {
        assert_eq!(
            &std::fs::read(out.join(f)).unwrap(),
            bytes,
            "{f} served back"
        );
    }
    let fatbin = entry.join(FILES[0]);
    let damages: [(&str, &dyn Fn()); 7] = [
        ("truncated", &|| {
            let b = std::fs::read(&fatbin).unwrap();
            std::fs::write(&fatbin, &b[..b.len() / 2]).unwrap();
        }),
        ("zero bytes", &|| std::fs::write(&fatbin, b"").unwrap()),
        ("one byte changed", &|| {
            let mut b = std::fs::read(&fatbin).unwrap();
            b[10] ^= 0x20;
            std::fs::write(&fatbin, b).unwrap();
        }),
        ("a file missing", &|| {
            std::fs::remove_file(entry.join("ptxas.txt")).unwrap()
        }),
        ("no manifest", &|| {
            std::fs::remove_file(entry.join(image_cache::MANIFEST)).unwrap()
        }),
        ("another key's manifest", &|| {
            let m = entry.join(image_cache::MANIFEST);
            let text = std::fs::read_to_string(&m).unwrap();
            std::fs::write(&m, text.replace(&inputs.key(), "0123")).unwrap();
        }),
        ("files but nothing else", &|| {
            std::fs::remove_dir_all(&entry).unwrap();
            std::fs::create_dir_all(&entry).unwrap();
            for f in FILES {
                std::fs::write(entry.join(f), b"half").unwrap();
            }
        }),
    ];
    for (what, damage) in damages {
        damage();
        assert!(
            matches!(fetch(&cache, &inputs.key(), &out), Fetch::Damaged(_)),
            "{what}"
        );
        let (hit, runs, warnings) = build(&cache, &out, &inputs, what);
        assert!(!hit && runs == 1, "{what}: compiled again");
        assert_eq!(warnings.len(), 1, "{what}: one warning line: {warnings:?}");
        assert!(warnings[0].contains("damaged"), "{what}: {}", warnings[0]);
        assert_eq!(
            build(&cache, &out, &inputs, "again"),
            (true, 0, vec![]),
            "{what}: replaced"
        );
        assert_eq!(
            std::fs::read(out.join(FILES[0])).unwrap(),
            format!("{what} {} ", FILES[0]).repeat(1000).into_bytes(),
            "{what}: the rebuilt image is served"
        );
    }
    // Nothing but entries is left in the cache folder (no staging or damaged folders).
    let names: Vec<String> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [inputs.key()]);
}

/// The key covers what changes the image: a build with NVCC_APPEND_FLAGS=-G and then one
/// without, for other targets, must not be served the first (debug) image; flags and targets
/// each change the key; an empty variable and an unset one are the same, hit or miss.
#[test]
fn the_key_covers_the_compiler_environment_and_targets() {
    let (cache, out, kernels) = cache_case("key");
    let all = "sm_75,sm_80,sm_86,sm_89,sm_90,sm_100,sm_120 + compute_75";
    let debug = inputs_for(&kernels, all, &[("NVCC_APPEND_FLAGS", "-G")]);
    assert_eq!(build(&cache, &out, &debug, "debug").1, 1);
    let plain = inputs_for(&kernels, "sm_90 + compute_90", &[]);
    assert_eq!(build(&cache, &out, &plain, "plain"), (false, 1, vec![]));
    assert!(
        std::fs::read_to_string(out.join(FILES[0]))
            .unwrap()
            .starts_with("plain")
    );
    let keys: Vec<String> = [
        inputs_for(&kernels, all, &[]),
        inputs_for(&kernels, all, &[("NVCC_APPEND_FLAGS", "-G")]),
        inputs_for(&kernels, all, &[("NVCC_PREPEND_FLAGS", "-G")]),
        inputs_for(&kernels, all, &[("NVCC_CCBIN", "/usr/bin/g++-12")]),
        inputs_for(&kernels, all, &[("NVRTC_SOMETHING", "1")]),
        inputs_for(&kernels, all, &[("PTXAS_OPTIONS", "-O0")]),
        inputs_for(&kernels, "sm_90 + compute_90", &[]),
        inputs_for(&kernels, "sm_90a + compute_90", &[]),
    ]
    .iter()
    .map(KeyInputs::key)
    .collect();
    let mut unique = keys.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        keys.len(),
        "every input changes the key: {keys:?}"
    );
    // Empty is unset, for the key and so for hit or miss.
    for var in ["NVCC_APPEND_FLAGS", "NVCC_CCBIN", "NVRTC_SOMETHING"] {
        assert_eq!(
            inputs_for(&kernels, all, &[(var, "")]).key(),
            keys[0],
            "{var}=\"\" and unset share a key"
        );
    }
    // An unrelated variable changes nothing.
    assert_eq!(
        inputs_for(&kernels, all, &[("CARGO_FOO", "1")]).key(),
        keys[0]
    );
    // The sources: any kernel file's bytes.
    std::fs::write(kernels.join("common.cuh"), "#pragma once\n// changed\n").unwrap();
    assert_ne!(inputs_for(&kernels, all, &[]).key(), keys[0]);
    // The manifest says what went into the key.
    let manifest =
        std::fs::read_to_string(cache.join(debug.key()).join(image_cache::MANIFEST)).unwrap();
    assert!(
        manifest.contains("input env NVCC_APPEND_FLAGS = -G"),
        "{manifest}"
    );
    assert!(
        manifest.contains("input source softmax.cu = "),
        "{manifest}"
    );
}

/// build.rs puts every compiler variable on its rerun list (a change must rerun it, or cargo
/// keeps the old image): the fixed ones always, others with a compiler prefix when set.
#[test]
fn every_compiler_variable_is_on_the_rerun_list() {
    let build_rs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("build.rs")).unwrap();
    assert!(build_rs.contains("image_cache::COMPILER_ENV_VARS"));
    assert!(build_rs.contains("image_cache::compiler_env(&lookup, env::vars_os()"));
    let map: HashMap<String, OsString> = [("NVRTC_X", "1"), ("PTXAS_Y", ""), ("OTHER", "1")]
        .iter()
        .map(|(k, v)| (k.to_string(), OsString::from(v)))
        .collect();
    let names = map.keys().map(OsString::from).collect::<Vec<_>>();
    let set = image_cache::compiler_env(&|n: &str| map.get(n).cloned(), names);
    assert_eq!(set, [("NVRTC_X".to_string(), "1".to_string())]);
}

/// build.rs and its modules read the checkout's location at run time: `env!` would fix it when
/// the build script is compiled, so one build-script binary shared by two checkouts through one
/// CARGO_TARGET_DIR (a global target dir, sccache) would read the other checkout's kernels.
#[test]
fn the_build_script_takes_the_checkout_location_at_run_time() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = vec![root.join("build.rs")];
    for entry in std::fs::read_dir(root.join("build")).unwrap() {
        sources.push(entry.unwrap().path());
    }
    for path in sources {
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            assert!(
                !(code.contains("env!(") && code.contains("CARGO_MANIFEST_DIR")),
                "{}:{}: compile-time CARGO_MANIFEST_DIR; use env::var_os at run time",
                path.display(),
                n + 1
            );
        }
    }
}

/// sm_120's PTX is the compute_90 PTX with the named kernels' `.minnctapersm` at three quarters
/// (at least 1), every other byte kept; a named kernel the PTX lacks (or holds without the
/// directive) is an error, not a silent copy.
#[test]
fn the_sm120_ptx_changes_only_the_named_launch_bounds() {
    let entry = |linkage: &str, name: &str, min_blocks: u32| {
        format!(
            "{linkage}.entry {name}(\n\t.param .align 8 .b8 {name}_param_0[80]\n)\n.maxntid 128, 1, 1\n\
             .minnctapersm {min_blocks}\n{{\n\tret;\n}}\n"
        )
    };
    let header = ".version 8.0\n.target sm_90\n.address_size 64\n".to_string();
    // The same six entries with the given `.minnctapersm` each.
    let kernels = [
        (".visible ", "softmax_block_f32_b128"),
        (".visible ", "softmax_backward_block_f32_b128"),
        (".weak ", "log_softmax_backward_block_bf16_b256"),
        ("", "softmax_backward_block_f16_b512"),
        (".visible ", "softmax_backward_online_f32_b512"),
        (".visible ", "softmax_backward_block_f32_b1024"),
    ];
    let ptx_with = |min_blocks: [u32; 6]| -> String {
        let entries: String = kernels
            .iter()
            .zip(min_blocks)
            .map(|((linkage, name), n)| entry(linkage, name, n))
            .collect();
        header.clone() + &entries
    };
    let ptx = ptx_with([8, 8, 4, 2, 2, 1]);
    let named: Vec<String> = [1, 2, 3, 5].map(|i| kernels[i].1.to_string()).to_vec();
    let derived = ptx_variants::sm120_ptx(&ptx, &named).expect("derives");
    assert_eq!(derived, ptx_with([8, 6, 3, 1, 2, 1]));
    // A named kernel missing from the PTX.
    let mut more = named.clone();
    more.push("softmax_backward_block_bf16_b128".into());
    let err = ptx_variants::sm120_ptx(&ptx, &more).expect_err("a kernel is missing");
    assert!(
        err.contains("softmax_backward_block_bf16_b128") && err.contains("build/ptx_variants.rs"),
        "{err}"
    );
    // A named kernel without launch bounds.
    let bare = header + ".visible .entry softmax_backward_block_f32_b128(\n)\n{\n\tret;\n}\n";
    assert!(ptx_variants::sm120_ptx(&bare, &named[..1]).is_err());
}
