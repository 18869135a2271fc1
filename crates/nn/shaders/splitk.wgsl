// The second half of a split-k product (see the `_shared` matmul kernels): c[c_off + r·ldc + col] =
// beta · c + Σ_s part[s · split_stride + r · n + col] over the `splits` partial products, one output per invocation.
// Splitting k gives a product with few output tiles (a 512-token prompt's [512, 576] projections: 72 tiles on a
// GPU with 132 SMs) several workgroups per tile, each with a fraction of the k loop. The training backward sums
// its other partial results with it too (the attention's dq over key parts, RMSNorm's weight gradient over row
// slices).

struct Params {
    m: u32,
    n: u32,
    splits: u32,
    split_stride: u32,
    c_off: u32,
    ldc: u32,
    beta: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;

@compute @workgroup_size(64)
fn split_k_sum(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= p.m * p.n) {
        return;
    }
    var sum = 0.0;
    for (var s = 0u; s < p.splits; s++) {
        sum += part[s * p.split_stride + i];
    }
    let at = p.c_off + (i / p.n) * p.ldc + i % p.n;
    if (p.beta == 0.0) {
        c[at] = sum;
    } else {
        c[at] = p.beta * c[at] + sum;
    }
}
