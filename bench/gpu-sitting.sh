#!/usr/bin/env bash
# One GPU sitting of issue 3's numbers, as run on the device machine: the wgpu test binaries, then wgpu_bench as
# built, with split-k off, with the matmuls' slab prefetch off and with the prefill attention's key split off,
# alternated, the build before the change under test when one is given, PyTorch
# f32 on the same card in between, and one profiled run. Prepare here (see bench/README.md, "On a GPU"):
#   cargo build --release -p userrl-nn --example wgpu_bench
#   cargo test --release -p userrl-nn --test wgpu_backward --test wgpu_conformance --test wgpu_trainer --no-run
#   copy target/release/examples/wgpu_bench and the three test binaries (target/release/deps/<name>-<hash>) as
#   <dir>/wgpu_bench, <dir>/wgpu_backward, ... into a folder that .git/info/exclude ignores, and optionally the
#   wgpu_bench of the commit to compare against as <dir>/wgpu_bench_before; strip them, and carry that folder and
#   the Vulkan loader debs (.gl/, see the device README).
# Usage there: [QUICK=1 | COMPARE="label:VAR=value ..."] bench/gpu-sitting.sh <dir>   (results under $OUT when set,
# else /tmp; QUICK=1 runs only the build, the build before and PyTorch; COMPARE the build under each setting)
set -u
dir=${1:?usage: bench/gpu-sitting.sh <folder with wgpu_bench and the wgpu test binaries>}
out=${OUT:-/tmp}
for f in .gl/*.deb; do [ -e "$f" ] && dpkg -x "$f" /; done
ldconfig 2>/dev/null
chmod +x "$dir"/*
export WGPU_BACKEND=vulkan PYTHONUNBUFFERED=1
t0=$(date +%s)
elapsed() { echo "[+$(( $(date +%s) - t0 ))s]"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null
# wgpu_backward hung on an H100 with its tests on parallel threads; one at a time it passes in seconds.
for t in wgpu_backward wgpu_conformance wgpu_trainer; do
  echo "$t: $(timeout 120 "$dir/$t" --test-threads=1 2>&1 | grep -E 'test result|panicked' | tr '\n' ' ')" "$(elapsed)"
done
summary() {
  python3 -c "
import json, sys
d = json.loads([l for l in open(sys.argv[1]) if l.startswith('{')][-1])
print(sys.argv[2], 'prefill', round(d['prefill_tokens_per_s']), 'decode', round(d['decode_batch1_tokens_per_s'], 1),
      'decode16', round(d.get('decode_batch16_tokens_per_s') or 0, 1),
      'train', round(d['train_step']['tokens_per_s']), 'logprobs', round(d['train_step'].get('logprob_tokens_per_s', 0)),
      'matmul', {m['tiles']: round(m['gflops']) for m in d['matmul']})
" "$1" "$2"
}
# bench <label> <binary> [VAR=value ...]
bench() {
  local label=$1 bin=$2
  shift 2
  [ -x "$bin" ] || return 0
  env "$@" timeout 90 "$bin" smollm2 512 1 5 >/tmp/sitting.json 2>/dev/null
  cat /tmp/sitting.json >>"$out/sitting.jsonl"
  summary /tmp/sitting.json "$label"
  elapsed
}
peer() {
  timeout 120 python3 bench/peers/pytorch_smollm2.py --device cuda --inference --steps 10 --runs 5 2>&1 | tail -1 |
    tee -a "$out/sitting.jsonl"
  elapsed
}
round() {
  bench as-built "$dir/wgpu_bench"
  if [ -z "${QUICK:-}" ]; then
    bench no-split "$dir/wgpu_bench" USERRL_WGPU_SPLIT_K=off
    bench no-prefetch "$dir/wgpu_bench" USERRL_WGPU_PREFETCH=off
    bench no-key-split "$dir/wgpu_bench" USERRL_WGPU_KEY_SPLIT=off
  fi
  bench before "$dir/wgpu_bench_before"
  peer
}
if [ -n "${COMPARE:-}" ]; then
  # COMPARE="label:VAR=value ...": the build as it is against itself under each setting, three rounds, no PyTorch.
  for r in 1 2 3; do
    bench as-built "$dir/wgpu_bench"
    for c in $COMPARE; do bench "${c%%:*}" "$dir/wgpu_bench" "${c#*:}"; done
  done
elif [ -n "${QUICK:-}" ]; then
  # QUICK=1: only the build against the one before and PyTorch, three rounds.
  round; round; round
else
  round; round
  # Tuning: other split targets than the defaults (256 workgroups, 128 keys).
  bench split-k-512 "$dir/wgpu_bench" USERRL_WGPU_SPLIT_K=512
  bench key-split-64 "$dir/wgpu_bench" USERRL_WGPU_KEY_SPLIT=64
  bench key-split-256 "$dir/wgpu_bench" USERRL_WGPU_KEY_SPLIT=256
fi
USERRL_WGPU_PROFILE=1 timeout 90 "$dir/wgpu_bench" smollm2 512 1 3 >"$out/profile.json" 2>&1
python3 -c "
import json
d = json.loads([l for l in open('$out/profile.json') if l.startswith('{')][-1])
for k in ('profile_prefill', 'profile_decode', 'profile_train'):
    print(k, [(x['kernel'], x['dispatches'], round(x['ms'], 1)) for x in (d.get(k) or [])[:12]])
"
elapsed
