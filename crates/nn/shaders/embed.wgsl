// Embedding gather: x[i, :] = table[tokens[i], :] for the tokens whose rows live in this chunk of the table (tables
// past one storage binding are split by rows; the host dispatches once per chunk).
// `embed_bwd` is its scatter-add backward without atomics (cpu_ops `embedding_bwd`): the host groups the token
// positions by id (`tokens` then holds [ids (u), offsets (u + 1), positions]), and one invocation per (distinct id,
// dim) adds that id's rows of the gradient (binding 2) in position order into the table gradient (binding 3).

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

@compute @workgroup_size(64)
fn embed_bwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    let u = p.t; // distinct ids
    if (idx >= u * p.hidden) {
        return;
    }
    let k = idx / p.hidden;
    let d = idx % p.hidden;
    let id = tokens[k];
    let dst = p.row_start + id * p.hidden + d;
    var acc = x[dst];
    for (var j = tokens[u + k]; j < tokens[u + k + 1u]; j++) {
        acc += table[tokens[2u * u + 1u + j] * p.hidden + d];
    }
    x[dst] = acc;
}
