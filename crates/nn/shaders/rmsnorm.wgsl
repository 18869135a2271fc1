// RMSNorm of each row: out = x / sqrt(mean(x²) + eps) · weight (model.rs `rms_norm`). One workgroup per row.
// `rms_norm_rstd` is the training forward (cpu_ops `rmsnorm_fwd`): it also saves each row's 1/rms for the backward.

struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    groups_x: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> rstd: array<f32>;

var<workgroup> part: array<f32, 64>;

@compute @workgroup_size(64)
fn rms_norm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let r = wg.x + wg.y * p.groups_x;
    if (r >= p.rows) {
        return;
    }
    let base = r * p.dim;
    var s = 0.0;
    for (var i = li; i < p.dim; i += 64u) {
        let v = x[base + i];
        s += v * v;
    }
    part[li] = s;
    workgroupBarrier();
    for (var stride = 32u; stride > 0u; stride >>= 1u) {
        if (li < stride) {
            part[li] += part[li + stride];
        }
        workgroupBarrier();
    }
    let inv = 1.0 / sqrt(part[0] / f32(p.dim) + p.eps);
    for (var i = li; i < p.dim; i += 64u) {
        out[base + i] = x[base + i] * inv * weight[i];
    }
}

@compute @workgroup_size(64)
fn rms_norm_rstd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let r = wg.x + wg.y * p.groups_x;
    if (r >= p.rows) {
        return;
    }
    let base = r * p.dim;
    var s = 0.0;
    for (var i = li; i < p.dim; i += 64u) {
        let v = x[base + i];
        s += v * v;
    }
    part[li] = s;
    workgroupBarrier();
    for (var stride = 32u; stride > 0u; stride >>= 1u) {
        if (li < stride) {
            part[li] += part[li + stride];
        }
        workgroupBarrier();
    }
    let inv = 1.0 / sqrt(part[0] / f32(p.dim) + p.eps);
    if (li == 0u) {
        rstd[r] = inv;
    }
    for (var i = li; i < p.dim; i += 64u) {
        out[base + i] = x[base + i] * inv * weight[i];
    }
}
