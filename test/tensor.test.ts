// Tensor: creation, dtype round trips (f16/bf16 conversions exact to the bit), device moves,
// views, dispose and use-after-dispose, and argument errors.
import { describe, expect, it } from 'vitest';

import { DisposedError, InvalidArgumentError, Tensor, buildInfo } from '../lib/index.js';

// float64 references for IEEE half and bfloat16 (round to nearest, ties to even).
function decodeF16(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exp = (bits >> 10) & 0x1f;
  const mant = bits & 0x3ff;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  if (exp === 0) return sign * mant * 2 ** -24;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

function roundToGrid(x: number, quantum: number): number {
  const q = x / quantum;
  const fl = Math.floor(q);
  const diff = q - fl;
  const r = diff > 0.5 ? fl + 1 : diff < 0.5 ? fl : fl % 2 === 0 ? fl : fl + 1;
  return r * quantum;
}

function exponentOf(a: number): number {
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e -= 1;
  if (2 ** (e + 1) <= a) e += 1;
  return e;
}

function roundF16(x: number): number {
  if (Number.isNaN(x)) return NaN;
  const a = Math.abs(x);
  if (a === 0 || !Number.isFinite(a)) return x;
  const quantum = a < 2 ** -14 ? 2 ** -24 : 2 ** (exponentOf(a) - 10);
  const r = roundToGrid(a, quantum);
  return Math.sign(x) * (r > 65504 ? Infinity : r);
}

function roundBF16(x: number): number {
  if (Number.isNaN(x)) return NaN;
  const a = Math.abs(x);
  if (a === 0 || !Number.isFinite(a)) return x;
  const quantum = a < 2 ** -126 ? 2 ** -133 : 2 ** (exponentOf(a) - 7);
  const r = roundToGrid(a, quantum);
  return Math.sign(x) * (r >= 2 ** 128 ? Infinity : r);
}

function sameValue(a: number, b: number): boolean {
  return Object.is(a, b) || (Number.isNaN(a) && Number.isNaN(b));
}

// Values that hit every rounding case: ties at every exponent, subnormals, the overflow edge.
function edgeCases(): Float32Array {
  const xs: number[] = [0, -0, 1, -1, Infinity, -Infinity, NaN, 65504, 65519.99, 65520, 65536, 1e-8, 2 ** -24, 2 ** -25,
    3 * 2 ** -26, 2 ** -14, 2 ** -14 - 2 ** -25, 3.4028234663852886e38, 1.1754943508222875e-38, 1e-45, 0.1, 1 / 3];
  for (let e = -30; e <= 20; e++) {
    // Exactly halfway between two f16 (and two bf16) neighbours, odd and even.
    xs.push((1 + 1 / 2048) * 2 ** e, (1 + 3 / 2048) * 2 ** e, (1 + 1 / 256) * 2 ** e, (1 + 3 / 256) * 2 ** e);
  }
  return Float32Array.from(xs);
}

function randomF32(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  const bits = new Uint32Array(out.buffer);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    bits[i] = s;
  }
  return out;
}

describe('Tensor basics', () => {
  it('round-trips f32, i32 and u8 data with its shape', async () => {
    const f = Tensor.from(new Float32Array([1.5, -2, 3, 4, 5, 6]), { shape: [2, 3] });
    expect(f.shape).toEqual([2, 3]);
    expect(f.dtype).toBe('f32');
    expect(f.device).toBe('cpu');
    expect(f.byteLength).toBe(24);
    expect(Array.from(await f.toArray())).toEqual([1.5, -2, 3, 4, 5, 6]);
    const i = Tensor.from(new Int32Array([-7, 2 ** 31 - 1]));
    expect(await i.toArray()).toEqual(new Int32Array([-7, 2 ** 31 - 1]));
    const u = Tensor.from(new Uint8Array([0, 255, 9]));
    expect(await u.toArray()).toEqual(new Uint8Array([0, 255, 9]));
  });

  it('takes an ArrayBuffer as raw storage of the given dtype', async () => {
    const bits = new Uint16Array([0x3c00, 0xc000]); // f16 1 and -2
    expect(Array.from(await Tensor.from(bits.buffer, { dtype: 'f16' }).toArray())).toEqual([1, -2]);
    expect(() => Tensor.from(new ArrayBuffer(6), { dtype: 'f32' })).toThrow(/6 bytes are not a whole number of f32 elements/);
    expect(() => Tensor.from(new ArrayBuffer(4))).toThrow(/ArrayBuffer holds raw bytes; pass its dtype/);
  });

  it('zeros are zero, and zero-size tensors work', async () => {
    expect(Array.from(await Tensor.zeros([3, 2], { dtype: 'bf16' }).toArray())).toEqual([0, 0, 0, 0, 0, 0]);
    const empty = Tensor.zeros([0, 4]);
    expect(empty.size).toBe(0);
    expect((await empty.toArray()).length).toBe(0);
  });

  it('reshape shares memory and checks the element count', async () => {
    const t = Tensor.from(new Float32Array([1, 2, 3, 4, 5, 6]));
    const v = t.reshape([3, 2]);
    expect(v.shape).toEqual([3, 2]);
    t.dispose();
    expect(Array.from(await v.toArray())).toEqual([1, 2, 3, 4, 5, 6]); // the view keeps the memory alive
    expect(() => v.reshape([4])).toThrow(/reshape: \[4\] has 4 elements, the tensor \[3, 2\] has 6/);
  });
});

describe('f16 and bf16 conversions', () => {
  it('decodes every one of the 65536 f16 bit patterns exactly', async () => {
    const bits = new Uint16Array(65536).map((_, i) => i);
    const wide = await Tensor.from(bits, { dtype: 'f16' }).toArray();
    for (let i = 0; i < 65536; i++) {
      if (!sameValue(wide[i]!, decodeF16(i))) throw new Error(`f16 0x${i.toString(16)}: got ${wide[i]}, expected ${decodeF16(i)}`);
    }
  });

  it('decodes bf16 as the top half of an f32', async () => {
    const bits = new Uint16Array(65536).map((_, i) => i);
    const wide = await Tensor.from(bits, { dtype: 'bf16' }).toArray();
    const expected = new Float32Array(new Uint32Array(65536).map((_, i) => i << 16).buffer);
    for (let i = 0; i < 65536; i++) {
      if (!sameValue(wide[i]!, expected[i]!)) throw new Error(`bf16 0x${i.toString(16)}: got ${wide[i]}, expected ${expected[i]}`);
    }
  });

  for (const [dtype, ref] of [['f16', roundF16], ['bf16', roundBF16]] as const) {
    it(`rounds f32 to ${dtype} to nearest, ties to even, on edge cases and 200k random values`, async () => {
      for (const xs of [edgeCases(), randomF32(200_000, dtype === 'f16' ? 1 : 2)]) {
        const got = await Tensor.from(xs, { dtype }).toArray();
        for (let i = 0; i < xs.length; i++) {
          const want = ref(xs[i]!);
          if (!sameValue(got[i]!, want)) throw new Error(`${dtype}(${xs[i]}): got ${got[i]}, expected ${want}`);
        }
      }
    });
  }

  it('keeps NaN a NaN and the sign of zero and infinity', async () => {
    const xs = new Float32Array([NaN, -0, Infinity, -Infinity]);
    for (const dtype of ['f16', 'bf16'] as const) {
      const got = await Tensor.from(xs, { dtype }).toArray();
      expect(Number.isNaN(got[0])).toBe(true);
      expect(Object.is(got[1], -0)).toBe(true);
      expect(got[2]).toBe(Infinity);
      expect(got[3]).toBe(-Infinity);
    }
  });

  it('cast between float dtypes goes through the same rounding', async () => {
    const xs = randomF32(4096, 7).map((x) => (Number.isFinite(x) ? x : 0));
    const bf = Tensor.from(xs).cast('bf16');
    const got = await bf.toArray();
    for (let i = 0; i < xs.length; i++) expect(sameValue(got[i]!, roundBF16(xs[i]!))).toBe(true);
    const back = await Tensor.from(new Int32Array([1, -2, 16777217])).cast('f32').toArray();
    expect(Array.from(back)).toEqual([1, -2, 16777216]);
  });
});

describe('devices', () => {
  it('reports the build and refuses CUDA tensors cleanly without a GPU', () => {
    const info = buildInfo();
    expect(typeof info.version).toBe('string');
    expect(info.backend).toBe(info.devices.length > 0 ? 'cuda' : 'cpu');
    if (info.devices.length === 0) {
      expect(() => Tensor.zeros([2], { device: 'cuda' })).toThrow(/cuda:0 is not available/);
      try {
        Tensor.zeros([2], { device: 'cuda' });
      } catch (e) {
        expect((e as { code?: string }).code).toBe('KVFOCUS_DEVICE_ERROR');
      }
    }
  });

  it('copies cpu to cpu with to()', async () => {
    const t = Tensor.from(new Float32Array([1, 2, 3]));
    const c = t.to('cpu');
    t.dispose();
    expect(Array.from(await c.toArray())).toEqual([1, 2, 3]);
  });
});

describe('dispose', () => {
  it('is idempotent, works with `using`, and later use throws DisposedError', async () => {
    const t = Tensor.from(new Float32Array([1]));
    t.dispose();
    t.dispose();
    expect(t.disposed).toBe(true);
    await expect(t.toArray()).rejects.toBeInstanceOf(DisposedError);
    expect(() => t.to('cpu')).toThrow(DisposedError);
    expect(() => t.reshape([1])).toThrow(/disposed/);
    let leaked: Tensor;
    {
      using u = Tensor.zeros([4]);
      leaked = u;
    }
    expect(leaked.disposed).toBe(true);
  });

  it('a read queued before dispose still completes', async () => {
    const t = Tensor.from(new Float32Array([4, 5]));
    const pending = t.toArray();
    t.dispose();
    expect(Array.from(await pending)).toEqual([4, 5]);
  });
});

describe('argument errors name the argument', () => {
  const cases: [string, () => unknown, RegExp][] = [
    ['non-array data', () => Tensor.from([1, 2] as unknown as Float32Array), /data: expected a Float32Array/],
    ['shape mismatch', () => Tensor.from(new Float32Array(6), { shape: [4, 2] }), /shape: \[4, 2\] has 8 elements but data has 6/],
    ['negative dim', () => Tensor.zeros([2, -1]), /shape\[1\]: expected a non-negative integer/],
    ['fractional dim', () => Tensor.zeros([1.5]), /shape\[0\]: expected a non-negative integer/],
    ['unknown dtype', () => Tensor.zeros([2], { dtype: 'f64' as 'f32' }), /dtype: expected one of f32, f16, bf16, i32, u8 but received 'f64'/],
    ['unknown device', () => Tensor.zeros([2], { device: 'tpu' as 'cpu' }), /device: expected 'cpu', 'cuda' or 'cuda:N' but received 'tpu'/],
    ['wrong array for dtype', () => Tensor.from(new Int32Array(2), { dtype: 'f32' }), /Int32Array cannot hold dtype f32/],
    ['raw 16-bit without dtype', () => Tensor.from(new Uint16Array(2)), /raw f16 or bf16 bits/],
    ['cast to int', () => Tensor.zeros([1]).cast('i32'), /cast: dtype must be f32, f16 or bf16/],
    ['huge tensor', () => Tensor.zeros([2 ** 40, 2 ** 20]), /larger than 2\^53 bytes/],
  ];
  for (const [name, fn, message] of cases) {
    it(name, () => {
      expect(fn).toThrow(InvalidArgumentError);
      expect(fn).toThrow(message);
    });
  }

  it('an impossible allocation is an OutOfMemoryError, not a crash', () => {
    try {
      Tensor.empty([2 ** 50], { dtype: 'u8' });
      throw new Error('allocated a petabyte');
    } catch (e) {
      expect((e as { code?: string }).code).toBe('KVFOCUS_OUT_OF_MEMORY');
    }
  });
});
