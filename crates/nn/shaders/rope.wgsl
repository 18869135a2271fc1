// RoPE on adjacent pairs (2i, 2i+1) of every head (model.rs `rope`), the training form (cpu_ops `RopeTable`): row r
// sits at position positions[r] (sequences laid end to end restart at 0), and with `inverse` it rotates by the
// opposite angle, which is the backward. The (cos, sin) of each position and pair come from a table the host fills
// with the CPU's exact f32 arithmetic, so both backends rotate by the same angles (GPU sin/cos of large arguments
// are not accurate enough to promise that). The inference form is `qkv_rope.wgsl`.

struct Params {
    rows: u32,      // tokens
    width: u32,     // floats per row (heads · head_dim)
    head_dim: u32,
    inverse: u32,   // 1 rotates by −angle
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read> table: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read> positions: array<u32>;

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
    let v = x[idx];
    x[idx] = vec2<f32>(v.x * cs.x - v.y * s, v.x * s + v.y * cs.x);
}
