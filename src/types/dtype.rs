//! The storage types' identities. Pure (no dependencies): build.rs compiles this file too, to
//! make the kernel instantiations from the kernel registry (src/planning/registry.rs).

/// A storage type's identity, used by the planner and for kernel names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Dtype {
    /// 32-bit IEEE float.
    F32,
    /// 16-bit IEEE half (`half::f16`, CUDA `__half`).
    F16,
    /// bfloat16 (`half::bf16`, CUDA `__nv_bfloat16`).
    Bf16,
}

impl Dtype {
    /// Every storage type.
    pub const ALL: [Dtype; 3] = [Dtype::F32, Dtype::F16, Dtype::Bf16];

    /// The name used in kernel symbols.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        }
    }

    /// Bytes per element.
    pub fn size_bytes(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
        }
    }

    /// Elements in one 16-byte access.
    pub fn vector_width(self) -> usize {
        16 / self.size_bytes()
    }
}
