// The inference layer's split of its fused projection [rows, q_width + 2·kv_width] (q | k | v per row, one matmul):
// q rotated (RoPE on adjacent pairs, model.rs `rope`) into its own buffer, k rotated into the KV cache's rows at
// positions start.., v copied into the cache's v rows; one dispatch instead of two rotations and two copies. The
// (cos, sin) table is the one `rope.wgsl` reads, filled by the host with the CPU's f32 arithmetic. The rows are
// rows row0.. of qkv and of q (one sequence's rows inside a batch of several sequences, each with its own cache).

struct Params {
    rows: u32,
    q_width: u32,  // floats of q per row (heads · head_dim)
    head_dim: u32,
    start: u32,    // position of row 0
    kv_width: u32, // floats of k (and of v) per row
    row0: u32,     // first row of qkv and q
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read> table: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read_write> q: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read_write> k_cache: array<vec2<f32>>;
@group(0) @binding(5) var<storage, read_write> v_cache: array<vec2<f32>>;

fn rotate(v: vec2<f32>, cs: vec2<f32>) -> vec2<f32> {
    return vec2<f32>(v.x * cs.x - v.y * cs.y, v.x * cs.y + v.y * cs.x);
}

@compute @workgroup_size(64)
fn qkv_rope(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    let q_pairs = p.q_width / 2u;
    let kv_pairs = p.kv_width / 2u;
    let row_pairs = q_pairs + 2u * kv_pairs;
    if (idx >= p.rows * row_pairs) {
        return;
    }
    let row = idx / row_pairs;
    let j = idx % row_pairs;
    let half = p.head_dim / 2u;
    let pos = p.start + row;
    let v = qkv[p.row0 * row_pairs + idx];
    if (j < q_pairs) {
        q[(p.row0 + row) * q_pairs + j] = rotate(v, table[pos * half + j % half]);
    } else if (j < q_pairs + kv_pairs) {
        let jk = j - q_pairs;
        k_cache[pos * kv_pairs + jk] = rotate(v, table[pos * half + jk % half]);
    } else {
        v_cache[pos * kv_pairs + j - q_pairs - kv_pairs] = v;
    }
}
