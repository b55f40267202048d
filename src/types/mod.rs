//! The values users hold: element types, device tensors and borrowed views of foreign memory,
//! and the error type every call returns.

pub mod borrow;
pub mod dtype;
pub mod element;
pub mod error;
pub mod tensor;
