#!/usr/bin/env python3
"""llama.cpp peer for `userrl bench nn`: llama-cpp-python on the same SmolLM2-135M-Instruct Q4_1 GGUF, N threads.
Measures what `userrl bench nn` measures: prefill of a 512-token prompt, decode at batch 1 (single-token steps after
a 64-token context), and decode at batch 16 (16 sequences, one token each per `llama_decode`, through the
low-level batch API). Medians over runs. Prints one JSON line.

    pip install llama-cpp-python==0.3.36   # builds llama.cpp from source: see bench/README.md
    python3 bench/peers/llamacpp_smollm2.py --threads 2
"""
import argparse
import json
import os
import statistics
import time

import llama_cpp
from llama_cpp import Llama

DEFAULT_MODEL = os.path.join(os.path.dirname(__file__), "..", "..", "models", "SmolLM2-135M-Instruct.Q4_1.gguf")


def synthetic_tokens(n_vocab, n):
    # The same deterministic ordinary-token ids as `userrl_nn::bench::synthetic_prompt`.
    span = max(n_vocab - 1000, 1)
    return [(1000 + (i * 7919) % span) % n_vocab for i in range(n)]


def median_seconds(runs, fn):
    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def clear_kv(ctx):
    if hasattr(llama_cpp, "llama_memory_clear"):
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
    else:
        llama_cpp.llama_kv_cache_clear(ctx)


def decode_batch(ctx, batch, entries):
    """entries: (token, pos, seq, want_logits) tuples, all in one llama_decode call."""
    batch.n_tokens = len(entries)
    for i, (tok, pos, seq, logits) in enumerate(entries):
        batch.token[i] = tok
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = 1 if logits else 0
    rc = llama_cpp.llama_decode(ctx, batch)
    if rc != 0:
        raise RuntimeError(f"llama_decode returned {rc}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--prefill-tokens", type=int, default=512)
    p.add_argument("--decode-context", type=int, default=64)
    p.add_argument("--decode-steps", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    args = p.parse_args()

    n_batch = max(args.prefill_tokens, args.decode_context, args.batch)
    llm = Llama(
        model_path=args.model,
        n_ctx=max(args.prefill_tokens, args.decode_context + args.decode_steps) + 16,
        n_batch=n_batch,
        n_ubatch=n_batch,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        verbose=False,
    )
    ctx = llm._ctx.ctx
    n_vocab = llm.n_vocab()
    tokens = synthetic_tokens(n_vocab, max(args.prefill_tokens, args.decode_context + args.decode_steps + args.batch))
    batch = llama_cpp.llama_batch_init(n_batch, 0, max(args.batch, 1))

    def prefill():
        clear_kv(ctx)
        n = args.prefill_tokens
        decode_batch(ctx, batch, [(tokens[i], i, 0, i == n - 1) for i in range(n)])

    prefill_s = median_seconds(args.runs, prefill)

    c, steps = args.decode_context, args.decode_steps

    def decode1():
        clear_kv(ctx)
        decode_batch(ctx, batch, [(tokens[i], i, 0, i == c - 1) for i in range(c)])
        start = time.perf_counter()
        for s in range(steps):
            decode_batch(ctx, batch, [(tokens[c + s], c + s, 0, True)])
        return time.perf_counter() - start

    decode1()
    decode1_s = statistics.median(decode1() for _ in range(args.runs))

    result = {
        "peer": "llama.cpp",
        "llama_cpp_python": llama_cpp.__version__,
        "model": os.path.basename(args.model),
        "threads": args.threads,
        "runs": args.runs,
        "statistic": "median",
        "prefill": {"tokens": args.prefill_tokens, "tokens_per_s": args.prefill_tokens / prefill_s},
        "decode": {"context": c, "steps": steps, "batch1_tokens_per_s": steps / decode1_s},
    }

    if args.batch > 0:
        b = args.batch
        # A second context with one KV stream per sequence (the high-level Llama has one sequence).
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = b * (c + steps + 8)
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = b
        params.n_threads = args.threads
        params.n_threads_batch = args.threads
        ctx = llama_cpp.llama_init_from_model(llm._model.model, params)
        if not ctx:
            raise RuntimeError("llama_init_from_model failed for the batched context")

        def decode_b():
            clear_kv(ctx)
            for seq in range(b):
                decode_batch(ctx, batch, [(tokens[seq + i], i, seq, i == c - 1) for i in range(c)])
            start = time.perf_counter()
            for s in range(steps):
                decode_batch(ctx, batch, [(tokens[seq + c + s], c + s, seq, True) for seq in range(b)])
            return time.perf_counter() - start

        decode_b()
        decode_b_s = statistics.median(decode_b() for _ in range(args.runs))
        result["decode"]["batch"] = b
        result["decode"]["batch_tokens_per_s"] = b * steps / decode_b_s
        llama_cpp.llama_free(ctx)

    llama_cpp.llama_batch_free(batch)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
