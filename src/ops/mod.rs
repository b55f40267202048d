//! The ops: each validates its inputs, plans its launches (crate::planning) and runs them on a
//! device (crate::runtime). Nothing is written before every check has passed.

pub mod cross_entropy;
pub mod softmax;
pub mod softmax_op;
