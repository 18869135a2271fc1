// RoPE on adjacent pairs (2i, 2i+1) of every head (model.rs `rope`). The (cos, sin) of each position and pair come
// from a table the host fills with the CPU's exact f32 arithmetic, so both backends rotate by the same angles (GPU
// sin/cos of large arguments are not accurate enough to promise that).
// `qkv_rope` is the inference form: it takes the fused projection [rows, q_width + 2·kv_width] (q | k | v per row,
// one matmul) apart, rotating q into its own buffer and k into the KV cache's rows at positions start.., and
// copying v into the cache's v rows: one dispatch instead of two rotations and two copies.
// `rope_rows` is the training form (cpu_ops `RopeTable`): row r sits at position positions[r] (sequences laid end
// to end restart at 0), and with `inverse` it rotates by the opposite angle, which is the backward.

struct Params {
    rows: u32,      // tokens
    width: u32,     // floats per row (heads · head_dim)
    head_dim: u32,
    start: u32,     // position of row 0 (`qkv_rope`)
    inverse: u32,   // `rope_rows`: 1 rotates by −angle
    kv_width: u32,  // `qkv_rope`: floats of k (and of v) per row
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read> table: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read> positions: array<u32>;
// `qkv_rope`'s outputs (its input is `x`, which it only reads).
@group(0) @binding(3) var<storage, read_write> q_out: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read_write> k_cache: array<vec2<f32>>;
@group(0) @binding(5) var<storage, read_write> v_cache: array<vec2<f32>>;

fn rotate(v: vec2<f32>, cs: vec2<f32>) -> vec2<f32> {
    return vec2<f32>(v.x * cs.x - v.y * cs.y, v.x * cs.y + v.y * cs.x);
}

@compute @workgroup_size(64)
fn qkv_rope(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    let q_pairs = p.width / 2u;
    let kv_pairs = p.kv_width / 2u;
    let row_pairs = q_pairs + 2u * kv_pairs;
    if (idx >= p.rows * row_pairs) {
        return;
    }
    let row = idx / row_pairs;
    let j = idx % row_pairs;
    let half = p.head_dim / 2u;
    let pos = p.start + row;
    let v = x[idx];
    if (j < q_pairs) {
        q_out[row * q_pairs + j] = rotate(v, table[pos * half + j % half]);
    } else if (j < q_pairs + kv_pairs) {
        let jk = j - q_pairs;
        k_cache[pos * kv_pairs + jk] = rotate(v, table[pos * half + jk % half]);
    } else {
        v_cache[pos * kv_pairs + j - q_pairs - kv_pairs] = v;
    }
}

@compute @workgroup_size(64)
fn rope_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    let pairs_per_row = p.width / 2u;
    if (idx >= p.rows * pairs_per_row) {
        return;
    }
    let row = idx / pairs_per_row;
    let half = p.head_dim / 2u;
    let i = (idx % pairs_per_row) % half;
    let cs = table[positions[row] * half + i];
    var s = cs.y;
    if (p.inverse != 0u) {
        s = -s;
    }
    x[idx] = rotate(x[idx], vec2<f32>(cs.x, s));
}
