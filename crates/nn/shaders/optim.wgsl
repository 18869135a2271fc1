// The optimiser step and the global gradient norm over flat buffers.
// `adamw`: one AdamW update of n floats from `off` (cpu_ops `adamw_step`; the host passes the bias corrections and
// the decoupled decay factor 1 − lr·wd, computed in f32 as the CPU does).
// `sumsq_partial` / `sumsq_final`: the two-pass norm. Each workgroup of the first pass writes Σx² of its 4,096
// floats to acc[slot + workgroup] (one dispatch per gradient tensor, each with its own slots); the second, one
// workgroup, writes sqrt(Σ acc[0..n]) to acc[slot].
// `adamw_clipped`: `adamw` on gradients first scaled as cpu_ops `clip_grad_norm` does (by max_norm / norm when the
// norm, clip_by[0], is finite and past max_norm; the scaled gradient is written back), so that clipping costs no
// pass of its own over the gradients.
// Bindings: `adamw` uses p, g, m, v (+ clip_by); the norm kernels use acc (binding 1) and data (binding 2).

struct Params {
    n: u32,
    off: u32,
    slot: u32,
    groups_x: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    decay: f32,
    bc1: f32,
    bc2: f32,
    max_norm: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> acc: array<f32>;
@group(0) @binding(2) var<storage, read_write> data: array<f32>;
@group(0) @binding(3) var<storage, read_write> mom1: array<f32>;
@group(0) @binding(4) var<storage, read_write> mom2: array<f32>;
@group(0) @binding(5) var<storage, read> clip_by: array<f32>;

const SEG: u32 = 4096u;
var<workgroup> part: array<f32, 256>;

// acc = parameters, data = gradients.
fn adamw_update(i: u32, g: f32) {
    let m = p.beta1 * mom1[i] + (1.0 - p.beta1) * g;
    let v = p.beta2 * mom2[i] + (1.0 - p.beta2) * g * g;
    mom1[i] = m;
    mom2[i] = v;
    let mhat = m / p.bc1;
    let vhat = v / p.bc2;
    acc[i] = acc[i] * p.decay - p.lr * mhat / (sqrt(vhat) + p.eps);
}

@compute @workgroup_size(64)
fn adamw(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    if (idx >= p.n) {
        return;
    }
    adamw_update(p.off + idx, data[p.off + idx]);
}

@compute @workgroup_size(64)
fn adamw_clipped(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    if (idx >= p.n) {
        return;
    }
    let i = p.off + idx;
    var g = data[i];
    let norm = clip_by[0];
    let finite = (bitcast<u32>(norm) & 0x7f800000u) != 0x7f800000u;
    if (finite && norm > p.max_norm && norm > 0.0) {
        g *= p.max_norm / norm;
        data[i] = g;
    }
    adamw_update(i, g);
}

@compute @workgroup_size(256)
fn sumsq_partial(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let gid = wg.x + wg.y * p.groups_x;
    let base = gid * SEG;
    if (base >= p.n) {
        return;
    }
    let end = min(base + SEG, p.n);
    var s = 0.0;
    for (var i = base + li; i < end; i += 256u) {
        let x = data[p.off + i];
        s += x * x;
    }
    part[li] = s;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride >>= 1u) {
        if (li < stride) {
            part[li] += part[li + stride];
        }
        workgroupBarrier();
    }
    if (li == 0u) {
        acc[p.slot + gid] = part[0];
    }
}

@compute @workgroup_size(256)
fn sumsq_final(@builtin(local_invocation_index) li: u32) {
    var s = 0.0;
    for (var i = li; i < p.n; i += 256u) {
        s += acc[i];
    }
    part[li] = s;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride >>= 1u) {
        if (li < stride) {
            part[li] += part[li + stride];
        }
        workgroupBarrier();
    }
    if (li == 0u) {
        acc[p.slot] = sqrt(part[0]);
    }
}
