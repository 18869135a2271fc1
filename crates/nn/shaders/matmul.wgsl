// y = x · wᵀ for row-major x [m, k] and w [n, k] (the layout of model.rs `linear`).
// `matmul_tiled` (prefill): each invocation keeps a 4×4 block of y in registers and streams vec4s of four x rows and
// four w rows, so every loaded vec4 feeds four dot products; no workgroup memory (barriers cost more than they save on
// CPU drivers, and the caches serve the reuse on GPUs).
// `matmul_rows` (decode, few rows): a workgroup computes eight outputs of one x row; adjacent invocations read
// adjacent vec4s of the same w row (coalesced), then reduce in workgroup memory.
// Large grids arrive folded into two dimensions (65,535 workgroups per dimension): the group id is x + y·groups_x.
// On GPUs a product with few tiles is split along k (`matmul_tiled_shared`'s `splits`): its workgroups write partial
// products that `splitk.wgsl` then sums into y.

struct Params {
    m: u32,        // rows of x used
    n: u32,        // rows of w (outputs)
    k4: u32,       // inner dimension / 4
    x_off4: u32,   // first x row, in vec4 units
    y_off: u32,    // y index of output (0, 0)
    ldy: u32,      // row stride of y, in floats
    groups_x: u32, // workgroups dispatched along x
    w_off4: u32,   // first float of w, in vec4 units (a window of a larger tensor)
    // Split-k (`matmul_tiled_shared` only): workgroup g computes tile g % tiles over k4 range
    // [s · k_split4, (s + 1) · k_split4) for s = g / tiles, into y_off + s · split_stride; `splitk.wgsl` sums them.
    k_split4: u32,
    split_stride: u32,
    splits: u32,
    beta: f32,     // y = beta · y + x · wᵀ (1 adds the product to y: the residual connection); 0 does not read y
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

fn store_row(r: u32, c0: u32, v: vec4<f32>) {
    store_row_at(p.y_off, r, c0, v);
}

fn store_row_at(y_off: u32, r: u32, c0: u32, v: vec4<f32>) {
    let base = y_off + r * p.ldy + c0;
    var out = v;
    if (p.beta != 0.0) {
        let old = vec4<f32>(y[base], y[base + min(1u, p.n - 1u - c0)], y[base + min(2u, p.n - 1u - c0)],
            y[base + min(3u, p.n - 1u - c0)]);
        out = p.beta * old + v;
    }
    y[base] = out.x;
    if (c0 + 1u < p.n) { y[base + 1u] = out.y; }
    if (c0 + 2u < p.n) { y[base + 2u] = out.z; }
    if (c0 + 3u < p.n) { y[base + 3u] = out.w; }
}

@compute @workgroup_size(16, 16)
fn matmul_tiled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let gid = wg.x + wg.y * p.groups_x;
    let col_blocks = (p.n + 63u) / 64u;
    let r0 = ((gid / col_blocks) * 16u + lid.y) * 4u;
    let c0 = ((gid % col_blocks) * 16u + lid.x) * 4u;
    if (r0 >= p.m || c0 >= p.n) {
        return;
    }
    // Clamped loads: the rows past the edge compute garbage that is never stored.
    let xa = p.x_off4 + r0 * p.k4;
    let xb = p.x_off4 + min(r0 + 1u, p.m - 1u) * p.k4;
    let xc = p.x_off4 + min(r0 + 2u, p.m - 1u) * p.k4;
    let xd = p.x_off4 + min(r0 + 3u, p.m - 1u) * p.k4;
    let wa = p.w_off4 + c0 * p.k4;
    let wb = p.w_off4 + min(c0 + 1u, p.n - 1u) * p.k4;
    let wc = p.w_off4 + min(c0 + 2u, p.n - 1u) * p.k4;
    let wd = p.w_off4 + min(c0 + 3u, p.n - 1u) * p.k4;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var kk = 0u; kk < p.k4; kk++) {
        let b0 = w[wa + kk];
        let b1 = w[wb + kk];
        let b2 = w[wc + kk];
        let b3 = w[wd + kk];
        let a0 = x[xa + kk];
        let a1 = x[xb + kk];
        let a2 = x[xc + kk];
        let a3 = x[xd + kk];
        acc0 += vec4<f32>(dot(a0, b0), dot(a0, b1), dot(a0, b2), dot(a0, b3));
        acc1 += vec4<f32>(dot(a1, b0), dot(a1, b1), dot(a1, b2), dot(a1, b3));
        acc2 += vec4<f32>(dot(a2, b0), dot(a2, b1), dot(a2, b2), dot(a2, b3));
        acc3 += vec4<f32>(dot(a3, b0), dot(a3, b1), dot(a3, b2), dot(a3, b3));
    }
    store_row(r0, c0, acc0);
    if (r0 + 1u < p.m) { store_row(r0 + 1u, c0, acc1); }
    if (r0 + 2u < p.m) { store_row(r0 + 2u, c0, acc2); }
    if (r0 + 3u < p.m) { store_row(r0 + 3u, c0, acc3); }
}

// Invocations per `matmul_rows` workgroup (a power of two <= 64): 64 on GPUs, 8 on CPU drivers, where a workgroup of
// one SIMD vector makes the barriers cheap.
override WG: u32 = 64u;
var<workgroup> part: array<vec4<f32>, 128>;

@compute @workgroup_size(WG)
fn matmul_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let gid = wg.x + wg.y * p.groups_x;
    let col_groups = (p.n + 7u) / 8u;
    let r = gid / col_groups;
    let c0 = (gid % col_groups) * 8u;
    if (r >= p.m) {
        return;
    }
    let xr = p.x_off4 + r * p.k4;
    var wr: array<u32, 8>;
    for (var j = 0u; j < 8u; j++) {
        wr[j] = p.w_off4 + min(c0 + j, p.n - 1u) * p.k4;
    }
    var s0 = vec4<f32>(0.0);
    var s1 = vec4<f32>(0.0);
    for (var kk = li; kk < p.k4; kk += WG) {
        let a = x[xr + kk];
        s0 += vec4<f32>(dot(a, w[wr[0] + kk]), dot(a, w[wr[1] + kk]), dot(a, w[wr[2] + kk]), dot(a, w[wr[3] + kk]));
        s1 += vec4<f32>(dot(a, w[wr[4] + kk]), dot(a, w[wr[5] + kk]), dot(a, w[wr[6] + kk]), dot(a, w[wr[7] + kk]));
    }
    part[li] = s0;
    part[li + WG] = s1;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if (li < stride) {
            part[li] += part[li + stride];
            part[li + WG] += part[li + WG + stride];
        }
        workgroupBarrier();
    }
    if (li == 0u) {
        store_row(r, c0, part[0]);
        if (c0 + 4u < p.n) {
            store_row(r, c0 + 4u, part[WG]);
        }
    }
}

// `matmul_tiled_shared`: `matmul_tiled`'s product and grid (a 64×64 tile of y per workgroup, 4×4 per invocation)
// for GPUs, where memory bandwidth rather than arithmetic limits the register-only kernel. Each step of 16 k the
// workgroup stages the tile's 64 x rows and 64 w rows in workgroup memory, transposed so that every invocation
// reads its four rows and four columns as one vec4 each: one global vec4 load per operand per invocation feeds
// 256 FMAs instead of 16. Rows and columns past the edge load clamped values whose results are never stored; k
// past the end loads zeros. Only whole workgroups leave early (the padding of a folded grid, before any barrier):
// every invocation of a working one reaches every barrier.
// With PREFETCH (the default) each invocation loads its share of the next slab into registers right after the
// barrier that publishes the current one, so the global loads' latency hides behind the slab's 256 FMAs instead of
// stalling every workgroup of a small product once per slab; `USERRL_WGPU_PREFETCH=off` compiles it without.
var<workgroup> xs: array<vec4<f32>, 256>; // [k 0..16][row quad 0..16]
var<workgroup> ws: array<vec4<f32>, 256>; // [k 0..16][column quad 0..16]
override PREFETCH: bool = true;

// One invocation's share of a slab: a vec4 (4 k) of one x row and of one w row, zeros from k_end on.
struct XwShare {
    xv: vec4<f32>,
    wv: vec4<f32>,
}

fn load_share(x_row: u32, w_row: u32, kk: u32, k_end: u32) -> XwShare {
    var v = XwShare(vec4<f32>(0.0), vec4<f32>(0.0));
    if (kk < k_end) {
        v.xv = x[x_row + kk];
        v.wv = w[w_row + kk];
    }
    return v;
}

@compute @workgroup_size(16, 16)
fn matmul_tiled_shared(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let gid = wg.x + wg.y * p.groups_x;
    let col_blocks = (p.n + 63u) / 64u;
    let tiles = ((p.m + 63u) / 64u) * col_blocks;
    let split = gid / tiles;
    if (split >= p.splits) {
        return; // the padding of a folded grid: the whole workgroup leaves together
    }
    let tile = gid % tiles;
    let row_base = (tile / col_blocks) * 64u;
    let col_base = (tile % col_blocks) * 64u;
    let k_begin = split * p.k_split4;
    let k_end = min(p.k4, k_begin + p.k_split4);
    // This invocation's share of the staging: one vec4 (4 k) of one x row and of one w row.
    let load_row = li / 4u;
    let load_k4 = li % 4u;
    let x_row = p.x_off4 + min(row_base + load_row, p.m - 1u) * p.k4;
    let w_row = p.w_off4 + min(col_base + load_row, p.n - 1u) * p.k4;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    var share = XwShare(vec4<f32>(0.0), vec4<f32>(0.0));
    if (PREFETCH) {
        share = load_share(x_row, w_row, k_begin + load_k4, k_end);
    }
    for (var k0 = k_begin; k0 < k_end; k0 += 4u) {
        if (!PREFETCH) {
            share = load_share(x_row, w_row, k0 + load_k4, k_end);
        }
        let xv = share.xv;
        let wv = share.wv;
        let quad = load_row / 4u;
        let lane = load_row % 4u;
        let k = load_k4 * 4u;
        xs[k * 16u + quad][lane] = xv.x;
        xs[(k + 1u) * 16u + quad][lane] = xv.y;
        xs[(k + 2u) * 16u + quad][lane] = xv.z;
        xs[(k + 3u) * 16u + quad][lane] = xv.w;
        ws[k * 16u + quad][lane] = wv.x;
        ws[(k + 1u) * 16u + quad][lane] = wv.y;
        ws[(k + 2u) * 16u + quad][lane] = wv.z;
        ws[(k + 3u) * 16u + quad][lane] = wv.w;
        workgroupBarrier();
        if (PREFETCH) {
            share = load_share(x_row, w_row, k0 + 4u + load_k4, k_end);
        }
        for (var s = 0u; s < 16u; s++) {
            let a = xs[s * 16u + lid.y];
            let b = ws[s * 16u + lid.x];
            acc0 += a.x * b;
            acc1 += a.y * b;
            acc2 += a.z * b;
            acc3 += a.w * b;
        }
        workgroupBarrier();
    }
    let r0 = row_base + lid.y * 4u;
    let c0 = col_base + lid.x * 4u;
    if (r0 >= p.m || c0 >= p.n) {
        return;
    }
    let y_off = p.y_off + split * p.split_stride;
    store_row_at(y_off, r0, c0, acc0);
    if (r0 + 1u < p.m) { store_row_at(y_off, r0 + 1u, c0, acc1); }
    if (r0 + 2u < p.m) { store_row_at(y_off, r0 + 2u, c0, acc2); }
    if (r0 + 3u < p.m) { store_row_at(y_off, r0 + 3u, c0, acc3); }
}
