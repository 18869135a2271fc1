// The backward's two matmul shapes with vec4 loads, for operands whose rows are multiples of 4 floats (every
// LLaMA width): `matmul_nn`: c[m, n] = a[m, k] · b[k, n] + beta · c, and `matmul_tn`: c[m, n] = a[k, m]ᵀ · b[k, n]
// + beta · c (linear_bwd's dx and dw, and the LM head's). Each invocation keeps a 4×4 block of c in registers and
// loads b's four columns (and, for `tn`, a's four rows) as one vec4 per k; `nn` reads a 4-wide step of k per row.
// The general strided kernel (matmul_general.wgsl) serves every other case. Offsets and strides are in vec4s.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    a_off4: u32,
    lda4: u32,
    b_off4: u32,
    ldb4: u32,
    c_off: u32,
    ldc: u32,
    beta: f32,
    groups_x: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

fn store(r: u32, c0: u32, v: vec4<f32>) {
    if (r >= p.m) {
        return;
    }
    let base = p.c_off + r * p.ldc + c0;
    if (p.beta == 0.0) {
        c[base] = v.x;
        c[base + 1u] = v.y;
        c[base + 2u] = v.z;
        c[base + 3u] = v.w;
    } else {
        c[base] = p.beta * c[base] + v.x;
        c[base + 1u] = p.beta * c[base + 1u] + v.y;
        c[base + 2u] = p.beta * c[base + 2u] + v.z;
        c[base + 3u] = p.beta * c[base + 3u] + v.w;
    }
}

// (row, column) of this invocation's 4×4 block, or m when it has none.
fn block(wg: vec3<u32>, lid: vec3<u32>) -> vec2<u32> {
    let gid = wg.x + wg.y * p.groups_x;
    let col_blocks = (p.n + 63u) / 64u;
    let r0 = ((gid / col_blocks) * 16u + lid.y) * 4u;
    let c0 = ((gid % col_blocks) * 16u + lid.x) * 4u;
    if (r0 >= p.m || c0 >= p.n) {
        return vec2<u32>(p.m, 0u);
    }
    return vec2<u32>(r0, c0);
}

@compute @workgroup_size(16, 16)
fn matmul_nn(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let rc = block(wg, lid);
    let r0 = rc.x;
    let c0 = rc.y;
    if (r0 >= p.m) {
        return;
    }
    var ar: array<u32, 4>;
    for (var i = 0u; i < 4u; i++) {
        ar[i] = p.a_off4 + min(r0 + i, p.m - 1u) * p.lda4;
    }
    let bc = p.b_off4 + c0 / 4u;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k4 = 0u; k4 < p.k / 4u; k4++) {
        let kb = bc + k4 * 4u * p.ldb4;
        let b0 = b[kb];
        let b1 = b[kb + p.ldb4];
        let b2 = b[kb + 2u * p.ldb4];
        let b3 = b[kb + 3u * p.ldb4];
        let a0 = a[ar[0] + k4];
        let a1 = a[ar[1] + k4];
        let a2 = a[ar[2] + k4];
        let a3 = a[ar[3] + k4];
        acc0 += a0.x * b0 + a0.y * b1 + a0.z * b2 + a0.w * b3;
        acc1 += a1.x * b0 + a1.y * b1 + a1.z * b2 + a1.w * b3;
        acc2 += a2.x * b0 + a2.y * b1 + a2.z * b2 + a2.w * b3;
        acc3 += a3.x * b0 + a3.y * b1 + a3.z * b2 + a3.w * b3;
    }
    store(r0, c0, acc0);
    store(r0 + 1u, c0, acc1);
    store(r0 + 2u, c0, acc2);
    store(r0 + 3u, c0, acc3);
}

@compute @workgroup_size(16, 16)
fn matmul_tn(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let rc = block(wg, lid);
    let r0 = rc.x;
    let c0 = rc.y;
    if (r0 >= p.m) {
        return;
    }
    let ac = p.a_off4 + r0 / 4u;
    let bc = p.b_off4 + c0 / 4u;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var kk = 0u; kk < p.k; kk++) {
        let av = a[ac + kk * p.lda4];
        let bv = b[bc + kk * p.ldb4];
        acc0 += av.x * bv;
        acc1 += av.y * bv;
        acc2 += av.z * bv;
        acc3 += av.w * bv;
    }
    store(r0, c0, acc0);
    store(r0 + 1u, c0, acc1);
    store(r0 + 2u, c0, acc2);
    store(r0 + 3u, c0, acc3);
}
