//! Every kernel family and dtype on the CPU SIMT emulator, in both thread-schedule orders.

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
