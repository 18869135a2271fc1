// Backward of the training RMSNorm (cpu_ops `rmsnorm_bwd`), from the saved rstd = 1/rms of each row:
// `rms_norm_bwd_dx`: dx += rstd·(w·dy) − rstd³·x·mean(w·dy·x), one workgroup per row (a reduction over the row);
// `rms_norm_bwd_dw`: Σ_rows dy·x·rstd per column over slices of `slice` rows, one invocation per (slice, column)
// writing its partial sum to out[slice·dim + column] (in row order); the host adds the slices to dw
// (`splitk.wgsl`). One invocation per column walking all rows left a 512-token step's 576 columns to 9
// workgroups on the whole GPU (115 µs a norm on an H100).
// The dx kernel accumulates into `out` (dx). Binding 5 (the weight) is only used by the dx kernel.

struct Params {
    rows: u32,
    dim: u32,
    groups_x: u32,
    slice: u32, // `rms_norm_bwd_dw`: rows per slice
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> rstd: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read> weight: array<f32>;

var<workgroup> part: array<f32, 64>;

@compute @workgroup_size(64)
fn rms_norm_bwd_dx(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let r = wg.x + wg.y * p.groups_x;
    if (r >= p.rows) {
        return;
    }
    let base = r * p.dim;
    var s = 0.0;
    for (var i = li; i < p.dim; i += 64u) {
        s += dy[base + i] * weight[i] * x[base + i];
    }
    part[li] = s;
    workgroupBarrier();
    for (var stride = 32u; stride > 0u; stride >>= 1u) {
        if (li < stride) {
            part[li] += part[li + stride];
        }
        workgroupBarrier();
    }
    let inv = rstd[r];
    let c = part[0] / f32(p.dim) * inv * inv;
    for (var i = li; i < p.dim; i += 64u) {
        out[base + i] += inv * (dy[base + i] * weight[i] - c * x[base + i]);
    }
}

@compute @workgroup_size(64)
fn rms_norm_bwd_dw(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    let slices = (p.rows + p.slice - 1u) / p.slice;
    if (idx >= slices * p.dim) {
        return;
    }
    let d = idx % p.dim;
    let first = (idx / p.dim) * p.slice;
    var s = 0.0;
    for (var r = first; r < min(first + p.slice, p.rows); r++) {
        s += dy[r * p.dim + d] * x[r * p.dim + d] * rstd[r];
    }
    out[idx] = s;
}
