// The general strided, batched matmul of the backward pass (cpu_ops `matmul_strided`): for every batch entry b,
// c[m, n] = op(a)[m, k] · op(b)[k, n] + beta · c, where each operand is addressed through explicit row and column
// strides, so one kernel serves A·B, Aᵀ·B and A·Bᵀ (the transposes are strides) and one head's columns inside a
// wider activation. Each invocation keeps a 4×4 block of c in registers (64×64 per workgroup); loads are scalar
// because a transposed operand has no contiguous vec4 along k. Batch entries and tiles are flattened into one
// workgroup index (folded into two grid dimensions past 65,535).

struct Params {
    m: u32,
    n: u32,
    k: u32,
    a_off: u32,
    rsa: u32,
    csa: u32,
    b_off: u32,
    rsb: u32,
    csb: u32,
    c_off: u32,
    ldc: u32,
    beta: f32,
    groups_x: u32,
    batch: u32,
    sa: u32, // batch strides, in floats
    sb: u32,
    sc: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

fn store(bi: u32, r: u32, c0: u32, v: vec4<f32>) {
    if (r >= p.m) {
        return;
    }
    let base = p.c_off + bi * p.sc + r * p.ldc + c0;
    for (var j = 0u; j < 4u; j++) {
        if (c0 + j < p.n) {
            if (p.beta == 0.0) {
                c[base + j] = v[j];
            } else {
                c[base + j] = p.beta * c[base + j] + v[j];
            }
        }
    }
}

@compute @workgroup_size(16, 16)
fn matmul_general(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let gid = wg.x + wg.y * p.groups_x;
    let col_blocks = (p.n + 63u) / 64u;
    let per_batch = ((p.m + 63u) / 64u) * col_blocks;
    let bi = gid / per_batch;
    let tile = gid % per_batch;
    if (bi >= p.batch) {
        return;
    }
    let r0 = ((tile / col_blocks) * 16u + lid.y) * 4u;
    let c0 = ((tile % col_blocks) * 16u + lid.x) * 4u;
    if (r0 >= p.m || c0 >= p.n) {
        return;
    }
    // Clamped addresses: rows and columns past the edge compute values that are never stored.
    let ab = p.a_off + bi * p.sa;
    let bb = p.b_off + bi * p.sb;
    var ar: array<u32, 4>;
    var bc: array<u32, 4>;
    for (var i = 0u; i < 4u; i++) {
        ar[i] = ab + min(r0 + i, p.m - 1u) * p.rsa;
        bc[i] = bb + min(c0 + i, p.n - 1u) * p.csb;
    }
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var kk = 0u; kk < p.k; kk++) {
        let ka = kk * p.csa;
        let kb = kk * p.rsb;
        let bv = vec4<f32>(b[bc[0] + kb], b[bc[1] + kb], b[bc[2] + kb], b[bc[3] + kb]);
        acc0 += a[ar[0] + ka] * bv;
        acc1 += a[ar[1] + ka] * bv;
        acc2 += a[ar[2] + ka] * bv;
        acc3 += a[ar[3] + ka] * bv;
    }
    store(bi, r0, c0, acc0);
    store(bi, r0 + 1u, c0, acc1);
    store(bi, r0 + 2u, c0, acc2);
    store(bi, r0 + 3u, c0, acc3);
}
