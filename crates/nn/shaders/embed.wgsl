// Embedding gather: x[i, :] = table[tokens[i], :] for the tokens whose rows live in this chunk of the table (tables
// past one storage binding are split by rows; the host dispatches once per chunk).

struct Params {
    t: u32,
    hidden: u32,
    row_start: u32,
    rows: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> tokens: array<u32>;
@group(0) @binding(2) var<storage, read> table: array<f32>;
@group(0) @binding(3) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(64)
fn embed(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    if (idx >= p.t * p.hidden) {
        return;
    }
    let tok = tokens[idx / p.hidden];
    if (tok >= p.row_start && tok < p.row_start + p.rows) {
        x[idx] = table[(tok - p.row_start) * p.hidden + idx % p.hidden];
    }
}
