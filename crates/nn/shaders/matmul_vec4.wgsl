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
    // Split-k (the `_shared` kernels only): workgroup g computes tile g % tiles over k range
    // [s · k_split, (s + 1) · k_split) for s = g / tiles, into c_off + s · split_stride; `splitk.wgsl` sums them.
    k_split: u32,
    split_stride: u32,
    splits: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

fn store(r: u32, c0: u32, v: vec4<f32>) {
    store_at(p.c_off, r, c0, v);
}

fn store_at(c_off: u32, r: u32, c0: u32, v: vec4<f32>) {
    if (r >= p.m) {
        return;
    }
    let base = c_off + r * p.ldc + c0;
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

// The same two products for GPUs, staged through workgroup memory 16 k at a time (as `matmul_tiled_shared` in
// matmul.wgsl): a's 64 rows and b's 64 columns of the tile are loaded once per workgroup instead of once per
// invocation; each invocation then reads one vec4 of each per k. k past the end stages zeros; rows and columns
// past the edge stage clamped values that are never stored; every invocation reaches every barrier.
// PREFETCH as in matmul.wgsl: the next slab's loads are issued before the current slab's FMAs.
var<workgroup> as4: array<vec4<f32>, 256>; // [k 0..16][row quad 0..16]
var<workgroup> bs4: array<vec4<f32>, 256>; // [k 0..16][column quad 0..16]
override PREFETCH: bool = true;

// This workgroup's tile: (first row, first column, split); the split is p.splits or more for the padding of a
// folded grid, which leaves before any barrier.
fn tile_origin(wg: vec3<u32>) -> vec3<u32> {
    let gid = wg.x + wg.y * p.groups_x;
    let col_blocks = (p.n + 63u) / 64u;
    let tiles = ((p.m + 63u) / 64u) * col_blocks;
    let tile = gid % tiles;
    return vec3<u32>((tile / col_blocks) * 64u, (tile % col_blocks) * 64u, gid / tiles);
}

// This invocation's vec4 of b's 16×64 slab at k0 (zeros from k_end on): row li / 16 of the slab, column quad
// li % 16 (b's rows are contiguous in n); it goes to bs4[li].
fn load_b(k0: u32, k_end: u32, li: u32, col_base: u32) -> vec4<f32> {
    let kr = k0 + li / 16u;
    let cq = min(col_base / 4u + li % 16u, p.n / 4u - 1u);
    var v = vec4<f32>(0.0);
    if (kr < k_end) {
        v = b[p.b_off4 + kr * p.ldb4 + cq];
    }
    return v;
}

fn multiply_tile(lid: vec3<u32>, acc: ptr<function, array<vec4<f32>, 4>>) {
    for (var s = 0u; s < 16u; s++) {
        let av = as4[s * 16u + lid.y];
        let bv = bs4[s * 16u + lid.x];
        (*acc)[0] += av.x * bv;
        (*acc)[1] += av.y * bv;
        (*acc)[2] += av.z * bv;
        (*acc)[3] += av.w * bv;
    }
}

fn store_tile(origin: vec3<u32>, lid: vec3<u32>, acc: array<vec4<f32>, 4>) {
    let r0 = origin.x + lid.y * 4u;
    let c0 = origin.y + lid.x * 4u;
    if (c0 >= p.n) {
        return;
    }
    let c_off = p.c_off + origin.z * p.split_stride;
    for (var i = 0u; i < 4u; i++) {
        store_at(c_off, r0 + i, c0, acc[i]);
    }
}

// `matmul_nn_shared`'s vec4 of a: 4 k of one row, zeros from k_end on (k and k_split are multiples of 4 here, the
// host checks, so a step never straddles the end).
fn load_a_nn(a_row: u32, k: u32, k_end: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    if (k < k_end) {
        v = a[a_row + k / 4u];
    }
    return v;
}

@compute @workgroup_size(16, 16)
fn matmul_nn_shared(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let origin = tile_origin(wg);
    if (origin.z >= p.splits) {
        return;
    }
    let k_begin = origin.z * p.k_split;
    let k_end = min(p.k, k_begin + p.k_split);
    // a's 64×16 slab: row li / 4, k quad li % 4, transposed into as4 on the way in.
    let load_row = li / 4u;
    let a_row = p.a_off4 + min(origin.x + load_row, p.m - 1u) * p.lda4;
    var acc: array<vec4<f32>, 4>;
    var v = vec4<f32>(0.0);
    var bv = vec4<f32>(0.0);
    if (PREFETCH) {
        v = load_a_nn(a_row, k_begin + (li % 4u) * 4u, k_end);
        bv = load_b(k_begin, k_end, li, origin.y);
    }
    for (var k0 = k_begin; k0 < k_end; k0 += 16u) {
        if (!PREFETCH) {
            v = load_a_nn(a_row, k0 + (li % 4u) * 4u, k_end);
            bv = load_b(k0, k_end, li, origin.y);
        }
        let quad = load_row / 4u;
        let lane = load_row % 4u;
        let kl = (li % 4u) * 4u;
        as4[kl * 16u + quad][lane] = v.x;
        as4[(kl + 1u) * 16u + quad][lane] = v.y;
        as4[(kl + 2u) * 16u + quad][lane] = v.z;
        as4[(kl + 3u) * 16u + quad][lane] = v.w;
        bs4[li] = bv;
        workgroupBarrier();
        if (PREFETCH) {
            v = load_a_nn(a_row, k0 + 16u + (li % 4u) * 4u, k_end);
            bv = load_b(k0 + 16u, k_end, li, origin.y);
        }
        multiply_tile(lid, &acc);
        workgroupBarrier();
    }
    store_tile(origin, lid, acc);
}

// `matmul_tn_shared`'s vec4 of a (stored [k, m]): row quad rq of k row kr, zeros from k_end on.
fn load_a_tn(rq: u32, kr: u32, k_end: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    if (kr < k_end) {
        v = a[p.a_off4 + kr * p.lda4 + rq];
    }
    return v;
}

@compute @workgroup_size(16, 16)
fn matmul_tn_shared(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let origin = tile_origin(wg);
    if (origin.z >= p.splits) {
        return;
    }
    let k_begin = origin.z * p.k_split;
    let k_end = min(p.k, k_begin + p.k_split);
    // a is stored [k, m]: its 16×64 slab is already k-major, a row quad per vec4 (m is a multiple of 4).
    let rq = min(origin.x / 4u + li % 16u, p.m / 4u - 1u);
    var acc: array<vec4<f32>, 4>;
    var v = vec4<f32>(0.0);
    var bv = vec4<f32>(0.0);
    if (PREFETCH) {
        v = load_a_tn(rq, k_begin + li / 16u, k_end);
        bv = load_b(k_begin, k_end, li, origin.y);
    }
    for (var k0 = k_begin; k0 < k_end; k0 += 16u) {
        if (!PREFETCH) {
            v = load_a_tn(rq, k0 + li / 16u, k_end);
            bv = load_b(k0, k_end, li, origin.y);
        }
        as4[li] = v;
        bs4[li] = bv;
        workgroupBarrier();
        if (PREFETCH) {
            v = load_a_tn(rq, k0 + 16u + li / 16u, k_end);
            bv = load_b(k0 + 16u, k_end, li, origin.y);
        }
        multiply_tile(lid, &acc);
        workgroupBarrier();
    }
    store_tile(origin, lid, acc);
}
