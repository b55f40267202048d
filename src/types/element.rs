//! The storage types kernels accept: f32, f16 and bf16 (sealed; arithmetic is always f32), and
//! the class-index types of cross-entropy targets: i32 and i64. Both kinds are
//! [`TensorElement`]s, the element types a `DeviceTensor` may hold.

use half::{bf16, f16};

pub use super::dtype::Dtype;

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
    impl Sealed for i32 {}
    impl Sealed for i64 {}
}

/// A type a [`crate::DeviceTensor`] may hold: the float [`Element`]s and the [`Index`] types.
/// Sealed.
pub trait TensorElement:
    sealed::Sealed
    + cudarc::driver::DeviceRepr
    + cudarc::driver::ValidAsZeroBits
    + Copy
    + Default
    + Send
    + Sync
    + std::fmt::Debug
    + 'static
{
    /// The type's name in messages and kernel symbols.
    const NAME: &'static str;
    /// A bit pattern no kernel writes (for floats a NaN with a distinctive payload): what
    /// uninitialised emulator memory holds, and the tests' output poison.
    fn poison() -> Self;
    /// True for exactly the `poison()` bit pattern.
    fn is_poison(self) -> bool;
}

/// A float storage type of logits and outputs. Implemented for `f32`, `half::f16` and
/// `half::bf16` only.
pub trait Element: TensorElement {
    /// This type's identity.
    const DTYPE: Dtype;
    /// Rounds to nearest even, as the kernels' stores do.
    fn from_f64(v: f64) -> Self;
    /// Exact widening.
    fn to_f64(self) -> f64;
    /// The largest finite value.
    const MAX_FINITE: f64;
}

/// A class-index type (cross-entropy targets): `i32` or `i64`. Sealed.
pub trait Index: TensorElement {
    /// Whether the kernels read it as 64 bits.
    const IS_I64: bool;
    /// Exact widening.
    fn to_i64(self) -> i64;
    /// From an i64 (tests and examples; the value must fit).
    fn from_i64(v: i64) -> Self;
}

impl TensorElement for f32 {
    const NAME: &'static str = "f32";
    fn poison() -> Self {
        f32::from_bits(0x7fa5_5a5a)
    }
    fn is_poison(self) -> bool {
        self.to_bits() == 0x7fa5_5a5a
    }
}

impl Element for f32 {
    const DTYPE: Dtype = Dtype::F32;
    const MAX_FINITE: f64 = f32::MAX as f64;
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
}

impl TensorElement for f16 {
    const NAME: &'static str = "f16";
    fn poison() -> Self {
        f16::from_bits(0x7d5a)
    }
    fn is_poison(self) -> bool {
        self.to_bits() == 0x7d5a
    }
}

impl Element for f16 {
    const DTYPE: Dtype = Dtype::F16;
    const MAX_FINITE: f64 = 65504.0;
    fn from_f64(v: f64) -> Self {
        f16::from_f64(v)
    }
    fn to_f64(self) -> f64 {
        f16::to_f64(self)
    }
}

impl TensorElement for bf16 {
    const NAME: &'static str = "bf16";
    fn poison() -> Self {
        bf16::from_bits(0x7fa5)
    }
    fn is_poison(self) -> bool {
        self.to_bits() == 0x7fa5
    }
}

impl Element for bf16 {
    const DTYPE: Dtype = Dtype::Bf16;
    const MAX_FINITE: f64 = 3.3895313892515355e38;
    fn from_f64(v: f64) -> Self {
        bf16::from_f64(v)
    }
    fn to_f64(self) -> f64 {
        bf16::to_f64(self)
    }
}

// Index poison: a value far outside any vocabulary, so an unwritten target is an invalid one.
impl TensorElement for i32 {
    const NAME: &'static str = "i32";
    fn poison() -> Self {
        -0x5a5a_5a5b
    }
    fn is_poison(self) -> bool {
        self == -0x5a5a_5a5b
    }
}

impl Index for i32 {
    const IS_I64: bool = false;
    fn to_i64(self) -> i64 {
        self.into()
    }
    fn from_i64(v: i64) -> Self {
        v as i32
    }
}

impl TensorElement for i64 {
    const NAME: &'static str = "i64";
    fn poison() -> Self {
        -0x5a5a_5a5a_5a5a_5a5b
    }
    fn is_poison(self) -> bool {
        self == -0x5a5a_5a5a_5a5a_5a5b
    }
}

impl Index for i64 {
    const IS_I64: bool = true;
    fn to_i64(self) -> i64 {
        self
    }
    fn from_i64(v: i64) -> Self {
        v
    }
}
