//! A census of the machine code (SASS) of the GPU image, from `cuobjdump -sass` text: what each
//! kernel's loops execute, by instruction class and access width.
//!
//! Why: the source and the emulator show intent, not what the GPU runs. NVVM splits 16-byte
//! stores that look wide in C++, `exp2f` grows a denormal sequence, and a loop's instruction
//! count decides whether a kernel can keep up with memory. `tests/sass_gate.rs` runs the census
//! on the embedded image and holds every kernel to budgets; this module is the pure part (text in,
//! numbers out), so it is unit-tested without any CUDA tool.
//!
//! Loops are found from the control flow: a branch to an earlier address closes a loop from its
//! target to itself; an innermost loop contains no other. A loop's elements per iteration (per
//! thread) are its widest data movement: the larger of the bytes it loads or stores, in global or
//! shared memory, over the element size. Loops that move no data (there are none in the current
//! kernels) are reported with zero elements.

use std::collections::BTreeMap;

/// One SASS instruction.
#[derive(Debug, Clone, PartialEq)]
pub struct Instruction {
    /// Byte offset in the function.
    pub address: u32,
    /// The guard predicate (`P0`, `!P1`), if any.
    pub predicate: Option<String>,
    /// Opcode with its modifiers, e.g. `LDG.E.128` or `MUFU.EX2`.
    pub opcode: String,
    /// Everything after the opcode, without the trailing `;`.
    pub operands: String,
}

/// One kernel's SASS for one architecture.
#[derive(Debug, Clone)]
pub struct Function {
    /// The entry point's name.
    pub name: String,
    /// Its instructions in address order.
    pub instructions: Vec<Instruction>,
}

/// Parses `cuobjdump -sass` output (one architecture) into functions.
pub fn parse_cuobjdump(text: &str) -> Vec<Function> {
    let mut functions: Vec<Function> = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(name) = trimmed.strip_prefix("Function : ") {
            functions.push(Function {
                name: name.trim().to_string(),
                instructions: Vec::new(),
            });
            continue;
        }
        // "/*0230*/   @!P0 LDG.E.128 R4, desc[UR6][R36.64] ;   /* 0x... */"
        let Some(rest) = trimmed.strip_prefix("/*") else {
            continue;
        };
        let Some((addr, body)) = rest.split_once("*/") else {
            continue;
        };
        let Ok(address) = u32::from_str_radix(addr.trim(), 16) else {
            continue; // an encoding-only line: "/* 0x000fe2... */"
        };
        let body = body.split("/*").next().unwrap_or("").trim();
        let body = body.trim_end_matches(';').trim();
        if body.is_empty() {
            continue;
        }
        let (predicate, body) = match body.strip_prefix('@') {
            Some(p) => {
                let (pred, rest) = p.split_once(' ').unwrap_or((p, ""));
                (Some(pred.to_string()), rest.trim())
            }
            None => (None, body),
        };
        let (opcode, operands) = body.split_once(' ').unwrap_or((body, ""));
        if let Some(f) = functions.last_mut() {
            f.instructions.push(Instruction {
                address,
                predicate,
                opcode: opcode.to_string(),
                operands: operands.trim().to_string(),
            });
        }
    }
    functions
}

/// What an instruction does, for the census.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// A global-memory load of this many bytes per thread.
    GlobalLoad(u32),
    /// A global-memory store of this many bytes per thread.
    GlobalStore(u32),
    /// A shared-memory load.
    SharedLoad(u32),
    /// A shared-memory store.
    SharedStore(u32),
    /// Local memory (register spills or a stack array): never wanted.
    Local,
    /// The special-function unit: exp2, reciprocal, ...
    Mufu,
    /// f32/f16 arithmetic, min/max.
    Float,
    /// Conversions between types (F2F, I2F, F2FP packing, ...).
    Conversion,
    /// Comparisons and predicate logic.
    Predicate,
    /// Warp shuffles and votes.
    Warp,
    /// Integer arithmetic, logic, moves and selects.
    Integer,
    /// Branches, barriers, exits and other control.
    Control,
    /// Everything else (special registers, constant loads, uniform datapath).
    Other,
}

impl Class {
    /// A short label for tables.
    pub fn label(&self) -> String {
        match self {
            Class::GlobalLoad(b) => format!("ldg{}", b * 8),
            Class::GlobalStore(b) => format!("stg{}", b * 8),
            Class::SharedLoad(b) => format!("lds{}", b * 8),
            Class::SharedStore(b) => format!("sts{}", b * 8),
            Class::Local => "local".into(),
            Class::Mufu => "mufu".into(),
            Class::Float => "fp".into(),
            Class::Conversion => "cvt".into(),
            Class::Predicate => "pred".into(),
            Class::Warp => "shfl".into(),
            Class::Integer => "int".into(),
            Class::Control => "ctrl".into(),
            Class::Other => "other".into(),
        }
    }
}

/// Bytes per thread of a memory opcode, from its width modifier (`.128`, `.64`, `.U16`, `.S8`;
/// none means 32 bits).
fn access_bytes(opcode: &str) -> u32 {
    for m in opcode.split('.').skip(1) {
        match m {
            "128" => return 16,
            "64" => return 8,
            "U16" | "S16" => return 2,
            "U8" | "S8" => return 1,
            _ => {}
        }
    }
    4
}

/// Classifies one instruction.
pub fn classify(ins: &Instruction) -> Class {
    let base = ins.opcode.split('.').next().unwrap_or("");
    match base {
        "LDG" => Class::GlobalLoad(access_bytes(&ins.opcode)),
        "STG" => Class::GlobalStore(access_bytes(&ins.opcode)),
        "LDS" | "LDSM" => Class::SharedLoad(access_bytes(&ins.opcode)),
        "STS" => Class::SharedStore(access_bytes(&ins.opcode)),
        "LDL" | "STL" => Class::Local,
        "MUFU" => Class::Mufu,
        "FADD" | "FMUL" | "FFMA" | "FMNMX" | "FSEL" | "FCHK" | "HADD2" | "HMUL2" | "HMNMX2"
        | "FMUL32I" | "FADD32I" | "FFMA32I" | "FSWZADD" => Class::Float,
        // HFMA2.MMA with zero operands is a move on the FMA pipe; still an instruction issued.
        "HFMA2" => Class::Float,
        "F2F" | "F2I" | "I2F" | "F2FP" | "I2FP" | "F2IP" | "FRND" => Class::Conversion,
        "ISETP" | "FSETP" | "HSETP2" | "PLOP3" | "P2R" | "R2P" | "DSETP" | "PSETP" => {
            Class::Predicate
        }
        "SHFL" | "VOTE" | "VOTEU" | "REDUX" | "MATCH" => Class::Warp,
        "IMAD" | "IADD3" | "IADD" | "LOP3" | "LOP" | "SHF" | "LEA" | "MOV" | "SEL" | "IABS"
        | "PRMT" | "ISCADD" | "IMNMX" | "VIMNMX" | "FLO" | "POPC" | "BREV" | "IMUL" | "SGXT"
        | "BMSK" | "LEA.HI" => Class::Integer,
        "BRA" | "BRX" | "EXIT" | "BAR" | "BSSY" | "BSYNC" | "WARPSYNC" | "CALL" | "RET"
        | "YIELD" | "BPT" | "JMP" | "BREAK" | "NANOSLEEP" | "MEMBAR" | "DEPBAR" | "ERRBAR"
        | "CCTL" => Class::Control,
        _ => Class::Other,
    }
}

/// The branch target of a `BRA` (its absolute byte offset), if it is one.
fn branch_target(ins: &Instruction) -> Option<u32> {
    if !ins.opcode.starts_with("BRA") {
        return None;
    }
    let hex = ins.operands.rsplit("0x").next()?;
    let digits: String = hex.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
    u32::from_str_radix(&digits, 16).ok()
}

/// A loop: instructions `first..=last` (indices into the function), closed by a backward branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loop {
    /// Index of the loop's first instruction (the branch target).
    pub first: usize,
    /// Index of the backward branch.
    pub last: usize,
}

/// Every loop of `f`. Not loops: a self-branch (the trap after the last EXIT), and a backward
/// branch placed after the function's last unconditional EXIT: that is out-of-line code (the
/// divergent-warp fallback that `BRA.DIV` jumps to) rejoining the main path. (A loop that
/// holds an exit block inside its span is still a loop.)
pub fn loops(f: &Function) -> Vec<Loop> {
    let index_of: BTreeMap<u32, usize> = f
        .instructions
        .iter()
        .enumerate()
        .map(|(i, ins)| (ins.address, i))
        .collect();
    let last_exit = f
        .instructions
        .iter()
        .rposition(|x| x.opcode == "EXIT" && x.predicate.is_none());
    let mut found = Vec::new();
    for (i, ins) in f.instructions.iter().enumerate() {
        if let Some(target) = branch_target(ins)
            && target < ins.address
            && let Some(&first) = index_of.get(&target)
            && last_exit.is_none_or(|e| i < e)
        {
            found.push(Loop { first, last: i });
        }
    }
    found.sort_by_key(|l| (l.first, l.last));
    found.dedup();
    found
}

/// The loops of `f` that contain no other loop.
pub fn innermost_loops(f: &Function) -> Vec<Loop> {
    let all = loops(f);
    all.iter()
        .copied()
        .filter(|l| {
            !all.iter()
                .any(|o| o != l && o.first >= l.first && o.last <= l.last)
        })
        .collect()
}

/// What one pass through a loop executes (per thread, i.e. per warp instruction).
#[derive(Debug, Clone, Default)]
pub struct LoopCensus {
    /// Instructions per iteration by class.
    pub by_class: BTreeMap<Class, u32>,
    /// All instructions per iteration.
    pub instructions: u32,
    /// Elements per thread per iteration (its widest data movement over the element size).
    pub elements: f64,
}

impl LoopCensus {
    /// Bytes of global memory loaded per iteration.
    pub fn global_load_bytes(&self) -> u32 {
        self.sum_bytes(|c| matches!(c, Class::GlobalLoad(_)))
    }
    /// Bytes of global memory stored per iteration.
    pub fn global_store_bytes(&self) -> u32 {
        self.sum_bytes(|c| matches!(c, Class::GlobalStore(_)))
    }
    fn sum_bytes(&self, pick: impl Fn(&Class) -> bool) -> u32 {
        self.by_class
            .iter()
            .filter(|(c, _)| pick(c))
            .map(|(c, n)| {
                n * match c {
                    Class::GlobalLoad(b)
                    | Class::GlobalStore(b)
                    | Class::SharedLoad(b)
                    | Class::SharedStore(b) => *b,
                    _ => 0,
                }
            })
            .sum()
    }
    /// Global accesses narrower than 16 bytes in this loop: (opcode class, count).
    pub fn narrow_global(&self) -> Vec<(Class, u32)> {
        self.by_class
            .iter()
            .filter(|(c, _)| matches!(c, Class::GlobalLoad(b) | Class::GlobalStore(b) if *b < 16))
            .map(|(c, n)| (*c, *n))
            .collect()
    }
    /// Does the loop move global memory 16 bytes at a time anywhere?
    pub fn has_wide_global(&self) -> bool {
        self.by_class
            .keys()
            .any(|c| matches!(c, Class::GlobalLoad(16) | Class::GlobalStore(16)))
    }
    /// Warp instructions per element: a warp instruction covers 32 lanes' elements.
    pub fn per_element(&self) -> f64 {
        if self.elements == 0.0 {
            return f64::INFINITY;
        }
        self.instructions as f64 / (32.0 * self.elements)
    }
}

/// Counts one loop of `f`; `input_bytes` and `output_bytes` are the storage sizes of the
/// kernel's input and output elements (2 and 4 for f32 output of 16-bit input) and `inputs` the
/// tensors it reads an element of (2 for a backward pass: y and dy), so that an element is
/// counted once however many loads bring it in. Shared memory holds the input's type.
pub fn census(
    f: &Function,
    l: Loop,
    input_bytes: u32,
    output_bytes: u32,
    inputs: u32,
) -> LoopCensus {
    let mut c = LoopCensus::default();
    for ins in &f.instructions[l.first..=l.last] {
        if ins.opcode == "NOP" {
            continue;
        }
        *c.by_class.entry(classify(ins)).or_default() += 1;
        c.instructions += 1;
    }
    let (input, output) = (
        f64::from(input_bytes.max(1)),
        f64::from(output_bytes.max(1)),
    );
    let elements = [
        f64::from(c.sum_bytes(|k| matches!(k, Class::GlobalLoad(_))) / inputs.max(1)) / input,
        f64::from(c.sum_bytes(|k| matches!(k, Class::GlobalStore(_)))) / output,
        f64::from(c.sum_bytes(|k| matches!(k, Class::SharedLoad(_)))) / input,
        f64::from(c.sum_bytes(|k| matches!(k, Class::SharedStore(_)))) / input,
    ];
    c.elements = elements.into_iter().fold(0.0, f64::max);
    c
}

/// Registers named in an operand list (`R4`, `R36.64`, `-R16`), in order.
fn registers(operands: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let bytes = operands.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts = bytes[i] == b'R'
            && (i == 0 || !(bytes[i - 1] as char).is_ascii_alphanumeric())
            && i + 1 < bytes.len()
            && bytes[i + 1].is_ascii_digit();
        if starts {
            let digits: String = operands[i + 1..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            if let Ok(r) = digits.parse() {
                found.push(r);
            }
            i += 1 + digits.len();
        } else {
            i += 1;
        }
    }
    found
}

/// Bytes of global loads one thread issues in a pass through loop `l` before any instruction
/// uses a loaded value: what it keeps in flight while it waits (memory-level parallelism).
/// The scan starts at the loop's first global load and wraps around the loop's end, so that a
/// software-pipelined loop (loads at the bottom, their uses at the top) counts its loads too.
pub fn bytes_before_first_use(f: &Function, l: Loop) -> u32 {
    let body = &f.instructions[l.first..=l.last];
    let Some(start) = body
        .iter()
        .position(|i| matches!(classify(i), Class::GlobalLoad(_)))
    else {
        return 0;
    };
    let mut loaded: Vec<u32> = Vec::new(); // registers holding loads still in flight
    let mut bytes = 0;
    for ins in body[start..].iter().chain(&body[..start]) {
        let regs = registers(&ins.operands);
        if let Class::GlobalLoad(b) = classify(ins) {
            // The first register is the destination (b / 4 consecutive registers); the rest
            // form the address.
            if regs[1..].iter().any(|r| loaded.contains(r)) {
                break;
            }
            if let Some(&dest) = regs.first() {
                loaded.extend(dest..dest + b.div_ceil(4));
            }
            bytes += b;
            continue;
        }
        // Stores read every operand; other instructions write their first, when it is a
        // register (a compare writes a predicate: all its registers are sources).
        let writes_register = ins.operands.trim_start().starts_with('R')
            && !matches!(classify(ins), Class::GlobalStore(_) | Class::SharedStore(_));
        let sources = if writes_register {
            regs.get(1..).unwrap_or(&[])
        } else {
            &regs[..]
        };
        if sources.iter().any(|r| loaded.contains(r)) {
            break;
        }
        // A register overwritten before use no longer holds a load.
        if let Some(dest) = regs.first().filter(|_| sources.len() < regs.len()) {
            loaded.retain(|r| r != dest);
        }
    }
    bytes
}

/// Registers and static shared memory of each kernel for `arch`, from `ptxas -v` output.
pub fn ptxas_resources(report: &str, arch: &str) -> BTreeMap<String, (u32, u32)> {
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in report.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let mut parts = rest.split('\'');
            let name = parts.next().unwrap_or_default().to_string();
            let this_arch = parts.nth(1).unwrap_or_default();
            current = (this_arch == arch).then_some(name);
        } else if let Some(rest) = line.split("Used ").nth(1)
            && let Some(name) = current.take()
        {
            let registers = rest
                .split(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let smem = rest
                .split(", ")
                .find_map(|part| part.strip_suffix(" bytes smem"))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0);
            out.insert(name, (registers, smem));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
	code for sm_90
		Function : k
	.headerflags	@"EF_CUDA_64BIT_ADDRESS EF_CUDA_SM90"
        /*0000*/                   LDC R1, c[0x0][0x28] ;                                 /* 0x00000a00ff017b82 */
                                                                                          /* 0x000fe20000000800 */
        /*0010*/              @!P0 LDG.E.128 R4, desc[UR6][R36.64] ;                      /* 0x0000000624048981 */
        /*0020*/                   FMNMX R3, R4, R5, !PT ;                                /* 0x0000000504037209 */
        /*0030*/                   MUFU.EX2 R3, R3 ;                                      /* 0x0000000300037308 */
        /*0040*/                   STG.E desc[UR6][R2.64], R3 ;                           /* 0x0000000302007986 */
        /*0050*/               @P1 BRA 0x10 ;                                             /* 0x0000000000008947 */
        /*0060*/                   EXIT ;                                                 /* 0x000000000000794d */
        /*0070*/                   BRA 0x70;                                              /* 0xfffffffc00fc7947 */
        /*0080*/                   NOP;                                                   /* 0x0000000000007918 */
"#;

    #[test]
    fn parses_classifies_and_finds_the_loop() {
        let fs = parse_cuobjdump(SAMPLE);
        assert_eq!(fs.len(), 1);
        let f = &fs[0];
        assert_eq!(f.name, "k");
        assert_eq!(f.instructions.len(), 9);
        assert_eq!(f.instructions[1].predicate.as_deref(), Some("!P0"));
        assert_eq!(classify(&f.instructions[1]), Class::GlobalLoad(16));
        assert_eq!(classify(&f.instructions[4]), Class::GlobalStore(4));
        let ls = innermost_loops(f);
        assert_eq!(
            ls,
            vec![Loop { first: 1, last: 5 }],
            "the self-branch trap is no loop"
        );
        let c = census(f, ls[0], 4, 4, 1);
        assert_eq!(c.instructions, 5);
        assert_eq!(c.elements, 4.0, "16 bytes of f32 per iteration");
        assert_eq!(c.narrow_global(), vec![(Class::GlobalStore(4), 1)]);
        assert!(c.has_wide_global());
        assert!((c.per_element() - 5.0 / 128.0).abs() < 1e-12);
    }

    #[test]
    fn nested_loops_report_only_the_inner_one() {
        let f = Function {
            name: "n".into(),
            instructions: (0..6)
                .map(|i| Instruction {
                    address: i * 16,
                    predicate: None,
                    opcode: match i {
                        3 => "BRA".into(),
                        5 => "BRA".into(),
                        _ => "IADD3".into(),
                    },
                    operands: match i {
                        3 => "0x20".into(),
                        5 => "0x0".into(),
                        _ => String::new(),
                    },
                })
                .collect(),
        };
        assert_eq!(loops(&f).len(), 2);
        assert_eq!(innermost_loops(&f), vec![Loop { first: 2, last: 3 }]);
    }

    #[test]
    fn loads_in_flight_stop_at_their_first_use() {
        let text = r#"
		Function : k
        /*0000*/                   LDG.E.128 R4, desc[UR8][R34.64] ;
        /*0010*/                   LDG.E.128 R8, desc[UR8][R34.64+0x2000] ;
        /*0020*/                   IADD3 R34, P0, R34, 0x4000, RZ ;
        /*0030*/                   FMNMX R0, R33, R4, !PT ;
        /*0040*/                   LDG.E.128 R12, desc[UR8][R34.64] ;
        /*0050*/                   BRA 0x0 ;
"#;
        let f = &parse_cuobjdump(text)[0];
        let l = loops(f)[0];
        // Two 16-byte loads before FMNMX reads R4.
        assert_eq!(bytes_before_first_use(f, l), 32);
        // A compare reads its registers (it writes a predicate): a use.
        let text = text.replace(
            "FMNMX R0, R33, R4, !PT",
            "FSETP.NEU.AND P1, PT, R4, -INF , PT",
        );
        let f = &parse_cuobjdump(&text)[0];
        assert_eq!(bytes_before_first_use(f, loops(f)[0]), 32);
        assert_eq!(registers("R4, desc[UR8][R34.64+0x2000]"), vec![4, 34]);
        assert_eq!(registers("-R16, R9, !PT"), vec![16, 9]);
    }

    #[test]
    fn ptxas_report_gives_registers_per_arch() {
        let report = "ptxas info    : Compiling entry function 'k' for 'sm_80'\n\
            ptxas info    : Used 40 registers, used 1 barriers, 144 bytes smem\n\
            ptxas info    : Compiling entry function 'k' for 'sm_90'\n\
            ptxas info    : Used 48 registers, used 1 barriers, 144 bytes smem\n";
        assert_eq!(ptxas_resources(report, "sm_90")["k"], (48, 144));
        assert_eq!(ptxas_resources(report, "sm_80")["k"], (40, 144));
    }
}
