#!/usr/bin/env python3
"""Writes the seed corpora fuzz/corpus/<target>/ (committed; rerun only to regenerate).

Each target gets a few small valid inputs and a few invalid ones (truncated, bad offsets,
wrong types), so that libFuzzer starts from every branch of the loader's validation.
Safetensors seeds with a "somnus.xxh64" checksum use a pure-Python XXH64 (the xxHash spec).
"""
import json, os, struct, sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
M = (1 << 64) - 1
P1, P2, P3, P4, P5 = (0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
                      0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5)


def rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & M


def rnd(acc, v):
    return rotl((acc + v * P2) & M, 31) * P1 & M


def xxh64(data, seed=0):
    n, i = len(data), 0
    if n >= 32:
        v = [(seed + P1 + P2) & M, (seed + P2) & M, seed, (seed - P1) & M]
        while i + 32 <= n:
            for k in range(4):
                v[k] = rnd(v[k], struct.unpack_from("<Q", data, i + 8 * k)[0])
            i += 32
        h = (rotl(v[0], 1) + rotl(v[1], 7) + rotl(v[2], 12) + rotl(v[3], 18)) & M
        for k in range(4):
            h = ((h ^ rnd(0, v[k])) * P1 + P4) & M
    else:
        h = (seed + P5) & M
    h = (h + n) & M
    while i + 8 <= n:
        h ^= rnd(0, struct.unpack_from("<Q", data, i)[0])
        h = (rotl(h, 27) * P1 + P4) & M
        i += 8
    if i + 4 <= n:
        h ^= struct.unpack_from("<I", data, i)[0] * P1 & M
        h = (rotl(h, 23) * P2 + P3) & M
        i += 4
    while i < n:
        h ^= data[i] * P5 & M
        h = rotl(h, 11) * P1 & M
        i += 1
    h ^= h >> 33; h = h * P2 & M; h ^= h >> 29; h = h * P3 & M; h ^= h >> 32
    return h


def put(target, name, data):
    d = os.path.join(root, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def safetensors(tensors, metadata=None, checksum=True):
    """tensors: [(name, dtype, shape, bytes)] in data order."""
    header, buf = {}, b""
    meta = dict(metadata or {})
    for name, dt, shape, raw in tensors:
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [len(buf), len(buf) + len(raw)]}
        buf += raw
    if checksum:
        meta["somnus.xxh64"] = "%016x" % xxh64(buf)
    if meta:
        header = {"__metadata__": meta, **header}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + buf


f32 = lambda *v: struct.pack("<%df" % len(v), *v)
tensors = [("b", "F64", [2], struct.pack("<2d", 1.5, -2.0)),
           ("w", "F32", [2, 3], f32(1, 2, 3, 4, 5, 6)),
           ("ids", "I32", [3], struct.pack("<3i", 7, -1, 0)),
           ("h", "BF16", [2], b"\x80\x3f\x00\x40")]
put("safetensors", "valid_checksum", safetensors(tensors, {"note": "seed"}))
put("safetensors", "valid_no_checksum", safetensors(tensors, checksum=False))
put("safetensors", "valid_empty", safetensors([], checksum=False))
put("safetensors", "valid_scalar_i64", safetensors([("s", "I64", [], struct.pack("<q", 42)), ("z", "F32", [0, 4], b"")]))
good = safetensors(tensors)
put("safetensors", "bad_truncated", good[:-5])
put("safetensors", "bad_short", good[:6])
put("safetensors", "bad_flipped_data", good[:-3] + bytes([good[-3] ^ 1]) + good[-2:])
put("safetensors", "bad_overlap", safetensors([("a", "F32", [2], f32(1, 2))], checksum=False).replace(b"[0,8]", b"[0,4]"))
put("safetensors", "bad_header_len", struct.pack("<Q", 1 << 40) + b"{}")
# Regressions: a zero dim beside dims whose product overflows int64 (strides overflowed: UB).
put("safetensors", "bad_zero_dim_huge_strides",
    safetensors([("a", "F32", [0, 9223372036854775807, 4], b"")], checksum=False))
put("safetensors", "bad_zero_dim_huge_product",
    safetensors([("a", "F64", [3037000500, 3037000500, 0], b"")], checksum=False))
put("safetensors", "bad_dtype", safetensors([("a", "U8", [2], b"\x01\x02")], checksum=False))

merges = [[104, 101], [108, 108], [256, 108], [32, 116], [259, 104], [111, 32]]
n = 256 + len(merges)
tok = {"format": "somnus.bpe_tokenizer", "version": 1, "pretokenizer": "gpt2_bytes", "vocab_size": n + 4,
       "bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>",
       "special_tokens": [{"id": n, "text": "<|bos|>"}, {"id": n + 1, "text": "<|eos|>"},
                          {"id": n + 2, "text": "<|pad|>"}, {"id": n + 3, "text": "<|sep|>"}],
       "merges": merges}
put("tokenizer", "valid", json.dumps(tok, indent=1))
put("tokenizer", "valid_no_merges", json.dumps({**tok, "merges": [], "vocab_size": 259,
    "special_tokens": [{"id": 256 + i, "text": t} for i, t in enumerate(["<|bos|>", "<|eos|>", "<|pad|>"])]}))
put("tokenizer", "bad_merge_forward_ref", json.dumps({**tok, "merges": [[104, 300]] + merges[1:]}))
put("tokenizer", "bad_vocab_size", json.dumps({**tok, "vocab_size": 5}))
put("tokenizer", "bad_special_id", json.dumps({**tok, "special_tokens": tok["special_tokens"][::-1]}))
put("tokenizer", "bad_truncated", json.dumps(tok)[:150])
put("tokenizer", "bad_types", json.dumps({**tok, "version": "1", "merges": {"a": 1}}))

model = {"preset": "gpt2-style", "vocab_size": 300, "n_layer": 2, "n_embd": 32, "n_head": 4, "block_size": 16}
put("model_config", "valid_gpt2", json.dumps(model))
put("model_config", "valid_llama", json.dumps({"preset": "llama-style", "vocab_size": 300, "n_layer": 1, "n_embd": 64,
    "n_head": 4, "n_kv_head": 2, "block_size": 32, "rope_theta": 500000.0}))
put("model_config", "valid_levels", json.dumps({**model, "levels": [{"kind": "dense", "period": 1},
    {"kind": "dense", "period": 4}], "attention_period": 2}))
put("model_config", "valid_defaults", "{}")
put("model_config", "bad_heads", json.dumps({**model, "n_head": 5}))
put("model_config", "bad_key", json.dumps({**model, "n_layers": 3}))
put("model_config", "bad_types", json.dumps({**model, "n_embd": "32", "levels": 3}))
put("model_config", "bad_preset", json.dumps({"preset": "gpt5"}))

train = {"data": "x.txt", "vocab_size": 300, "model": model, "steps": 20, "batch_size": 2, "lr": 3e-3,
         "schedule": "wsd", "warmup_steps": 2, "decay_fraction": 0.3, "decay_shape": "1-sqrt",
         "checkpoint_every": 5, "eval_every": 0}
put("train_config", "valid", json.dumps(train))
put("train_config", "valid_overrides", json.dumps(train) + "\0--model.n_layer\0" "3\0--lr=1e-2\0--schedule\0cosine")
put("train_config", "valid_empty", "{}")
put("train_config", "bad_key", json.dumps({**train, "stepz": 3}))
put("train_config", "bad_range", json.dumps({**train, "batch_size": -1, "beta2": 2}))
put("train_config", "bad_override", json.dumps(train) + "\0--model.levels.7.period\0" "2")
put("train_config", "bad_schedule", json.dumps({**train, "schedule": "linear"}))

# data: byte 0 even = token stream, odd = prompt/answer; bytes 1, 2 = batch, seq_len/max_len.
put("data", "stream", bytes([0, 4, 8]) + bytes(range(64)))
put("data", "stream_too_short", bytes([0, 2, 30]) + bytes(range(20)))
put("data", "stream_bad_batch", bytes([2, 0, 8]) + bytes(range(64)))
put("data", "prompt_answer", bytes([1, 3, 24]) + b"2+2=\x004\x00capital of France?\x00Paris\x00\x00empty prompt")
put("data", "prompt_answer_long", bytes([1, 2, 6]) + b"a long prompt that is cut\x00ok\x00p\x00an answer too long")
put("data", "prompt_answer_empty", bytes([1, 1, 3]))
# clinc150: both files' shapes (synthetic rows, not the dataset's).
rows = {"train": [["what is my balance", "balance"], ["freeze my card", "freeze_account"]],
        "val": [["how much money do i have", "balance"]], "test": [["lock my account", "freeze_account"]],
        "oos_train": [["tell me a joke", "oos"]]}
put("clinc150", "data_full", json.dumps(rows))
put("clinc150", "domains", json.dumps({"banking": ["balance", "freeze_account"], "travel": ["book_flight"]}))
put("clinc150", "bad_row", json.dumps({**rows, "train": [["only text"]]}))
put("clinc150", "bad_domains_dup", json.dumps({"a": ["x", "y"], "b": ["y"]}))
put("clinc150", "bad_types", json.dumps({"train": "x", "val": [[1, 2]], "test": None}))

# arc1d: ARC task JSON (synthetic grids) and grid text.
arc = {"train": [{"input": [[0, 3, 3, 0]], "output": [[0, 0, 3, 3]]},
                 {"input": [[1, 2], [3, 4]], "output": [[2, 1], [4, 3]]}],
       "test": [{"input": [[0, 5, 0, 0]], "output": [[0, 0, 5, 0]]}]}
put("arc1d", "task", json.dumps(arc))
put("arc1d", "grid_text", "0 3 3 0\n1 2 5 9")
put("arc1d", "bad_colour", json.dumps({**arc, "test": [{"input": [[10]], "output": [[0]]}]}))
put("arc1d", "bad_ragged", json.dumps({**arc, "train": [{"input": [[1, 2], [3]], "output": [[1]]}]}))
put("arc1d", "bad_big", json.dumps({**arc, "test": [{"input": [[0] * 31], "output": [[0]]}]}))
put("arc1d", "bad_missing", json.dumps({"train": []}))
print("corpus written under", root, file=sys.stderr)
