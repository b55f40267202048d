//! Every kernel family and dtype on the CPU SIMT emulator, in three thread-schedule orders:
//! forward, reverse, and a seeded random order per block.

mod common;

use cuda_softmax::{Device, EmulatorConfig, Schedule, bf16, f16};

fn emulator(schedule: Schedule) -> Device {
    Device::emulator_with(EmulatorConfig {
        schedule,
        workers: 0,
    })
}

#[test]
fn f32_forward_schedule() {
    common::full_suite::<f32>(&emulator(Schedule::Forward), "f32_forward_schedule");
}

#[test]
fn f32_reverse_schedule() {
    common::full_suite::<f32>(&emulator(Schedule::Reverse), "f32_reverse_schedule");
}

#[test]
fn f16_forward_schedule() {
    common::full_suite::<f16>(&emulator(Schedule::Forward), "f16_forward_schedule");
}

#[test]
fn f16_reverse_schedule() {
    common::full_suite::<f16>(&emulator(Schedule::Reverse), "f16_reverse_schedule");
}

#[test]
fn bf16_forward_schedule() {
    common::full_suite::<bf16>(&emulator(Schedule::Forward), "bf16_forward_schedule");
}

#[test]
fn bf16_reverse_schedule() {
    common::full_suite::<bf16>(&emulator(Schedule::Reverse), "bf16_reverse_schedule");
}

/// A random thread order per block, seeded from the printed test seed.
fn shuffled(test: &str) -> Device {
    let seed = cuda_softmax::check::Rng::seed_from_env();
    println!("{test}: schedule seed {seed}");
    emulator(Schedule::Shuffled { seed })
}

#[test]
fn f32_shuffled_schedule() {
    common::full_suite::<f32>(&shuffled("f32_shuffled_schedule"), "f32_shuffled_schedule");
}

#[test]
fn f16_shuffled_schedule() {
    common::full_suite::<f16>(&shuffled("f16_shuffled_schedule"), "f16_shuffled_schedule");
}

#[test]
fn bf16_shuffled_schedule() {
    common::full_suite::<bf16>(
        &shuffled("bf16_shuffled_schedule"),
        "bf16_shuffled_schedule",
    );
}
