//! Helpers the wgpu test files share: the adapter (a missing one fails with a pointer to scripts/setup),
//! deterministic random inputs and the relative error every conformance check uses.

#![allow(dead_code)] // each test file uses its own subset

use userrl_nn::wgpu::Device;

pub fn device() -> Device {
    Device::wgpu().unwrap_or_else(|e| panic!("the wgpu tests need an adapter (run scripts/setup): {e}"))
}

/// Deterministic values in [-scale, scale).
pub fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// max |got − want| / max |want|.
pub fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let diff = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    let scale = want.iter().map(|v| v.abs()).fold(0.0, f32::max).max(1e-12);
    diff / scale
}
