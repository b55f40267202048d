//! `cuda-softmax sweep` on the emulator (`--emulator --quick`, a few seconds): it must write a
//! CSV, a JSON and an SVG per op with every op x dtype present, positive finite numbers, the
//! traffic the planner promises, and well-formed SVG with a line per dtype.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const OPS: [&str; 5] = [
    "softmax",
    "log_softmax",
    "softmax_backward",
    "logsumexp",
    "cross_entropy",
];
const DTYPES: [&str; 3] = ["f32", "f16", "bf16"];
const QUICK_COLS: [usize; 5] = [16, 1024, 4096, 16384, 65536];

fn sweep(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cuda-softmax"))
        .arg("sweep")
        .args(args)
        .output()
        .expect("the binary runs")
}

fn out_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    // A previous run's files must not make this one pass.
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The CSV's rows as header-name -> value maps.
fn csv_rows(text: &str) -> Vec<Vec<(String, String)>> {
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .expect("a header")
        .split(',')
        .map(String::from)
        .collect();
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), header.len(), "CSV line {l:?}");
            header
                .iter()
                .cloned()
                .zip(f.iter().map(|s| s.to_string()))
                .collect()
        })
        .collect()
}

fn field<'a>(row: &'a [(String, String)], name: &str) -> &'a str {
    &row.iter()
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("no column {name}"))
        .1
}

fn number(row: &[(String, String)], name: &str) -> f64 {
    let v: f64 = field(row, name)
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a number in {row:?}"));
    assert!(v.is_finite() && v > 0.0, "{name} = {v} in {row:?}");
    v
}

/// Tags balance (a stack of open elements), ignoring declarations and comments.
fn assert_well_formed(svg: &str, path: &Path) {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = svg;
    while let Some(start) = rest.find('<') {
        let end = rest[start..]
            .find('>')
            .unwrap_or_else(|| panic!("{}: unclosed tag", path.display()))
            + start;
        let tag = &rest[start + 1..end];
        rest = &rest[end + 1..];
        if tag.starts_with('?') || tag.starts_with('!') || tag.ends_with('/') {
            continue;
        }
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| !c.is_whitespace())
            .collect();
        if tag.starts_with('/') {
            assert_eq!(
                stack.pop().as_deref(),
                Some(name.as_str()),
                "{}: mismatched </{name}>",
                path.display()
            );
        } else {
            stack.push(name);
        }
    }
    assert!(stack.is_empty(), "{}: unclosed {stack:?}", path.display());
    assert!(svg.trim_start().starts_with("<svg") || svg.trim_start().starts_with("<?xml"));
}

#[test]
fn sweep_on_the_emulator_writes_csv_json_and_svg() {
    let dir = out_dir("sweep-quick");
    let out = sweep(&["--out", dir.to_str().unwrap(), "--emulator", "--quick"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("PREDICTED"), "{stdout}");
    assert!(stderr.contains("[75/75]"), "progress: {stderr}");

    let csv = std::fs::read_to_string(dir.join("sweep.csv")).expect("sweep.csv");
    let rows = csv_rows(&csv);
    assert_eq!(rows.len(), OPS.len() * DTYPES.len() * QUICK_COLS.len());
    for op in OPS {
        for dtype in DTYPES {
            for cols in QUICK_COLS {
                let row = rows
                    .iter()
                    .find(|r| {
                        field(r, "op") == op
                            && field(r, "dtype") == dtype
                            && field(r, "cols") == cols.to_string()
                    })
                    .unwrap_or_else(|| panic!("no row for {op} {dtype} {cols}"));
                for name in [
                    "rows",
                    "bytes_min",
                    "bytes_moved",
                    "ms",
                    "gbs",
                    "copy_gbs",
                    "ratio_to_copy",
                    "predicted_gbs",
                ] {
                    number(row, name);
                }
                assert_eq!(field(row, "source"), "emulator");
                let traffic = number(row, "bytes_moved") / number(row, "bytes_min");
                // Cross-entropy's per-row words weigh most at 16 classes (about 3x).
                assert!(
                    (0.99..4.0).contains(&traffic),
                    "{op} {dtype} {cols}: traffic {traffic}"
                );
                // Without a GPU the GB/s is the prediction: copy x minimum / moved.
                let want = number(row, "copy_gbs") / traffic;
                assert!((number(row, "gbs") / want - 1.0).abs() < 1e-3, "{row:?}");
            }
        }
    }
    // The planner's promises: one pass for a warp row and for a block row, two passes (1.5x)
    // for 65536 columns (past the emulator's 96 KiB of shared memory a block).
    let traffic = |op: &str, cols: usize| {
        let r = rows
            .iter()
            .find(|r| {
                field(r, "op") == op
                    && field(r, "dtype") == "f32"
                    && field(r, "cols") == cols.to_string()
            })
            .unwrap();
        number(r, "bytes_moved") / number(r, "bytes_min")
    };
    assert!((traffic("softmax", 1024) - 1.0).abs() < 0.01);
    assert!((traffic("softmax", 16384) - 1.0).abs() < 0.01);
    assert!((traffic("softmax", 65536) - 1.5).abs() < 0.02);

    let json = std::fs::read_to_string(dir.join("sweep.json")).expect("sweep.json");
    assert_eq!(json.matches("\"op\":").count(), rows.len());
    assert_eq!(json.matches('{').count(), json.matches('}').count());
    assert!(json.contains("\"measured\": false"));
    for bad in ["NaN", "inf"] {
        assert!(!json.contains(bad), "{bad} in sweep.json");
    }

    for op in OPS {
        let path = dir.join(format!("sweep_{op}.svg"));
        let svg = std::fs::read_to_string(&path).expect("an SVG per op");
        assert_well_formed(&svg, &path);
        assert!(
            svg.contains("PREDICTED"),
            "{}: says it is predicted",
            path.display()
        );
        for dtype in DTYPES {
            assert!(
                svg.contains(&format!("{dtype} predicted")),
                "{}: {dtype}",
                path.display()
            );
        }
        // Per panel: the dtypes' lines and their legend marks (plus the copy line on top).
        let lines = svg.matches("<polyline").count() + svg.matches("<path").count();
        assert!(
            lines >= 4 * DTYPES.len(),
            "{}: {lines} lines",
            path.display()
        );
    }
}

#[test]
fn bad_arguments_exit_2_with_usage() {
    for args in [
        &[][..],
        &["--out"][..],
        &["--out", "x", "--cols", "abc"][..],
        &["--out", "x", "--frobnicate"][..],
    ] {
        let out = sweep(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("usage:"));
    }
}

/// The checker above catches what it is there for.
#[test]
#[should_panic(expected = "mismatched")]
fn well_formed_check_rejects_crossed_tags() {
    assert_well_formed("<svg><g><text>x</g></text></svg>", Path::new("t.svg"));
}

#[test]
#[should_panic(expected = "unclosed")]
fn well_formed_check_rejects_unclosed_elements() {
    assert_well_formed("<svg><g>", Path::new("t.svg"));
}
