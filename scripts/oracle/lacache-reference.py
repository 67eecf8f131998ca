#!/usr/bin/env python3
"""The authors' LaCache as an oracle for lib/policies/lacache.ts.

Runs the official `LaCache.__call__` (GATECH-EIC/LaCache, the kv_cache.py given by --kv-cache;
the LongBench/NIAH copy takes a start_size, the perplexity copy has 4 built in) on caches whose
entries are token indices instead of keys and values, through a stand-in for the four torch
calls it makes (tensor, as_tensor, gather, view/expand), so its own code decides which token
each layer keeps. For each configuration below it appends the chunks in order, calling the
compaction after each one as the authors' loops do after every forward pass, and writes
(--out, JSON):
  chunks: the appended chunk sizes, as [size, times] runs;
  steps:  per call [length, fnv] (fnv: FNV-1a over every layer's kept indices, each layer
          followed by -1; see test/policies/lacache.test.ts), and
  final:  every layer's kept indices after the last call.
test/fixtures/lacache-reference.json is this script's output:

  git clone https://github.com/GATECH-EIC/LaCache /tmp/LaCache
  python3 scripts/oracle/lacache-reference.py --kv-cache /tmp/LaCache/LongBench/lacache/kv_cache.py \\
      --out test/fixtures/lacache-reference.json

Needs python3 with numpy only.
"""

import argparse
import importlib.util
import json
import sys
import types

import numpy as np


class Indices:
    """The slice of torch.Tensor that kv_cache.py touches, over a numpy array."""

    def __init__(self, array):
        self.array = np.asarray(array)

    @property
    def shape(self):
        return self.array.shape

    @property
    def device(self):
        return 'cpu'

    def size(self, dim):
        return self.array.shape[dim]

    def view(self, *shape):
        return Indices(self.array.reshape(shape))

    def expand(self, *shape):
        full = tuple(self.array.shape[i] if s == -1 else s for i, s in enumerate(shape))
        return Indices(np.broadcast_to(self.array, full))

    def __getitem__(self, index):
        # torch raises on an index past the end; so does this (numpy would too, but say which).
        for i in index:
            if not 0 <= i < len(self.array):
                raise IndexError(f'index {i} out of range for {len(self.array)} entries')
        return Indices(self.array[index])

    def __len__(self):
        return len(self.array)


def torch_stand_in():
    torch = types.ModuleType('torch')
    torch.long = np.int64
    torch.tensor = lambda data: Indices(np.asarray(data, dtype=np.int64))
    torch.as_tensor = lambda data, dtype=None, device=None: Indices(
        (data.array if isinstance(data, Indices) else np.asarray(data)).astype(np.int64))
    torch.gather = lambda x, dim, index: Indices(np.take_along_axis(x.array, index.array, axis=dim))
    return torch


def load_lacache(path):
    sys.modules['torch'] = torch_stand_in()
    spec = importlib.util.spec_from_file_location('authors_kv_cache', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LaCache


def fnv(layers):
    h = 2166136261
    for kept in layers:
        for v in list(kept) + [-1]:
            h = ((h ^ (int(v) & 0xFFFFFFFF)) * 16777619) & 0xFFFFFFFF
    return h


def run(LaCache, layers, budget, span, overlap, sinks, runs):
    chunks = [size for size, times in runs for _ in range(times)]
    try:
        cache = LaCache(cache_size=budget, start_size=sinks, span=span, overlap=overlap)
    except TypeError:  # the perplexity copy: start_size is 4, built in
        assert sinks == 4, 'the perplexity kv_cache.py keeps 4 sinks'
        cache = LaCache(cache_size=budget, span=span, overlap=overlap)
    kept = [np.zeros((1, 1, 0, 1), dtype=np.int64) for _ in range(layers)]
    tokens = 0
    steps = []
    for count in chunks:
        new = np.arange(tokens, tokens + count, dtype=np.int64).reshape(1, 1, count, 1)
        tokens += count
        past = [(Indices(np.concatenate([k, new], axis=2)),) * 2 for k in kept]
        kept = [k.array for k, _ in cache(past)]
        flat = [k.reshape(-1).tolist() for k in kept]
        # Only well-defined calls belong in the fixture (overlap > 0 with a chunk that needs two
        # start-over rounds can cache a token twice or out of order in the authors' code).
        assert all(a < b for layer in flat for a, b in zip(layer, layer[1:])), 'a layer repeats or reorders tokens'
        steps.append([len(flat[0]), fnv(flat)])
    return {'steps': steps, 'final': [k.reshape(-1).tolist() for k in kept]}


# (name, layers, budget, span, overlap, sinks, chunks as [size, times] runs): one token at a
# time as in the perplexity runs, or a prompt in one chunk and then tokens as in LongBench/NIAH.
CONFIGS = [
    ('tokens, L8 C16 S2 O0 s4', 8, 16, 2, 0, 4, [[1, 400]]),
    ('tokens, L8 C20 S4 O2 s2', 8, 20, 4, 2, 2, [[1, 400]]),
    ('tokens, L12 C40 S3 O1 s4', 12, 40, 3, 1, 4, [[1, 500]]),
    ('tokens, L6 C15 S1 O0 s0', 6, 15, 1, 0, 0, [[1, 300]]),
    ('tokens, authors default L32 C256 S16 O0 s4', 32, 256, 16, 0, 4, [[1, 1500]]),
    ('chunks, L8 C24 S2 O0 s4', 8, 24, 2, 0, 4, [[100, 1], [1, 50], [37, 1], [1, 20], [250, 1], [3, 1], [5, 1], [1, 30]]),
    ('chunks, L10 C30 S3 O0 s5', 10, 30, 3, 0, 5, [[29, 1], [1, 2], [7, 1], [64, 1], [2, 1], [1, 40], [500, 1], [1, 10]]),
    ('chunks in one round, L8 C20 S4 O2 s2', 8, 20, 4, 2, 2,
     [[20, 1], [1, 1], [5, 1], [3, 1], [2, 1], [4, 1], [1, 30], [3, 1], [4, 1], [5, 1], [1, 20]]),
    ('prompt then tokens, L16 C64 S4 O0 s8', 16, 64, 4, 0, 8, [[1000, 1], [1, 200]]),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--kv-cache', required=True, help="the authors' kv_cache.py")
    parser.add_argument('--out', required=True)
    args = parser.parse_args()
    LaCache = load_lacache(args.kv_cache)
    cases = []
    for name, layers, budget, span, overlap, sinks, runs in CONFIGS:
        result = run(LaCache, layers, budget, span, overlap, sinks, runs)
        cases.append({'name': name, 'layers': layers, 'budget': budget, 'span': span, 'overlap': overlap,
                      'sinks': sinks, 'chunks': runs, **result})
    with open(args.out, 'w') as f:
        f.write('{\n  "source": "GATECH-EIC/LaCache LaCache.__call__ (LongBench/lacache/kv_cache.py) via scripts/oracle/lacache-reference.py",\n')
        f.write('  "cases": [\n')
        for i, case in enumerate(cases):
            f.write('    ' + json.dumps(case, separators=(',', ':')) + (',\n' if i + 1 < len(cases) else '\n'))
        f.write('  ]\n}\n')


if __name__ == '__main__':
    main()
