// Element-wise kernels: SwiGLU of a fused gate|up projection (a[r, i] = silu(b[r, i]) · b[r, _p0 + i] for rows of
// 2·_p0 floats, model.rs's gate/up step) and the residual add (a += b); for
// training, SwiGLU into a separate output (a = silu(b) · c, keeping gate and up) and its backward
// (cpu_ops `swiglu_bwd`: a = dgate, d = dup from e = dout, b = gate, c = up, both overwritten).
// `group_sum` adds up per-head gradients over the query heads of each kv head (a = Σ b over the group, for
// attention's dk and dv: b [rows, heads·hd] into a [rows, kv_heads·hd]; _p0 = hd, _p1 = heads per kv head,
// _p2 = kv_heads·hd), and over _p3 parts of b _p4 floats apart when the backward split its rows (0: one). Large
// arrays arrive as a 2D grid of 64-wide workgroups.

struct Params {
    n: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
    _p3: u32,
    _p4: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> c: array<f32>;
@group(0) @binding(4) var<storage, read_write> d: array<f32>;
@group(0) @binding(5) var<storage, read> e: array<f32>;

@compute @workgroup_size(64)
fn swiglu(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= p.n) {
        return;
    }
    let at = (i / p._p0) * 2u * p._p0 + i % p._p0;
    let g = b[at];
    a[i] = g / (1.0 + exp(-g)) * b[at + p._p0];
}

@compute @workgroup_size(64)
fn add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= p.n) {
        return;
    }
    a[i] = a[i] + b[i];
}

@compute @workgroup_size(64)
fn swiglu_out(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= p.n) {
        return;
    }
    let g = b[i];
    a[i] = g / (1.0 + exp(-g)) * c[i];
}

@compute @workgroup_size(64)
fn swiglu_bwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= p.n) {
        return;
    }
    let g = b[i];
    let u = c[i];
    let dy = e[i];
    let s = 1.0 / (1.0 + exp(-g));
    d[i] = dy * g * s;
    a[i] = dy * u * s * (1.0 + g * (1.0 - s));
}

@compute @workgroup_size(64)
fn group_sum(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= p.n) {
        return;
    }
    let row = i / p._p2;
    let g = (i % p._p2) / p._p0;
    let d = i % p._p0;
    let base = row * p._p2 * p._p1 + g * p._p1 * p._p0 + d;
    var sum = 0.0;
    for (var part = 0u; part < max(p._p3, 1u); part++) {
        for (var h = 0u; h < p._p1; h++) {
            sum += b[part * p._p4 + base + h * p._p0];
        }
    }
    a[i] = sum;
}
