import { mkdirSync, readFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ModelFormatError } from '../../lib/errors.js';
import {
  MAX_HEADER_BYTES,
  openSafetensors,
  openSafetensorsFile,
  openShardedSafetensors,
  readSafetensorsHeader,
} from '../../lib/model/safetensors.js';
import { assembleSafetensors, expectModelFormatError, makeTempDir, safetensorsBytes, writeFile, writeJson } from './helpers.js';

const temp = makeTempDir();
afterAll(temp.cleanup);
let counter = 0;
/** A new subfolder per test, so files never collide. */
function folder(): string {
  const dir = path.join(temp.dir, `case-${counter++}`);
  mkdirSync(dir);
  return dir;
}

/** Header JSON text + data for hand-made (often broken) files. */
function rawFile(header: unknown, dataBytes: number): Buffer {
  return assembleSafetensors(JSON.stringify(header), Buffer.alloc(dataBytes, 0xab));
}

describe('readSafetensorsHeader: well-formed files', () => {
  it('gives each tensor its dtype, shape and absolute byte range, without reading the data', async () => {
    const dir = folder();
    const weight = Float32Array.from([1, 2, 3, 4, 5, 6]);
    const bytes = safetensorsBytes(
      [
        { name: 'a.weight', dtype: 'F32', shape: [2, 3], data: new Uint8Array(weight.buffer) },
        { name: 'b.half', dtype: 'F16', shape: [4] },
        { name: 'c.bf16', dtype: 'BF16', shape: [1, 2, 2] },
        { name: 'ids', dtype: 'I32', shape: [3] },
        { name: 'mask', dtype: 'U8', shape: [5] },
        { name: 'big', dtype: 'I64', shape: [2] },
      ],
      { metadata: { format: 'pt' } },
    );
    const file = writeFile(dir, 'model.safetensors', bytes);

    const header = await readSafetensorsHeader(file);

    expect(header.file).toBe(file);
    expect(header.fileSize).toBe(bytes.length);
    expect(header.metadata).toEqual({ format: 'pt' });
    expect(header.dataOffset).toBe(8 + header.headerLength);
    expect(header.dataOffset % 8).toBe(0); // the builder pads the header like the reference writer
    expect(header.tensors.map((t) => [t.name, t.dtype, t.shape, t.byteLength])).toEqual([
      ['a.weight', 'F32', [2, 3], 24],
      ['b.half', 'F16', [4], 8],
      ['c.bf16', 'BF16', [1, 2, 2], 8],
      ['ids', 'I32', [3], 12],
      ['mask', 'U8', [5], 5],
      ['big', 'I64', [2], 16],
    ]);
    const a = header.tensors[0]!;
    expect(a.byteOffset).toBe(header.dataOffset);
    const onDisk = readFileSync(file).subarray(a.byteOffset, a.byteOffset + a.byteLength);
    expect(Array.from(new Float32Array(onDisk.buffer.slice(onDisk.byteOffset, onDisk.byteOffset + 24)))).toEqual([1, 2, 3, 4, 5, 6]);
    expect(header.tensors[1]!.byteOffset).toBe(header.dataOffset + 24);
  });

  it('accepts scalars, empty tensors and an empty checkpoint', async () => {
    const dir = folder();
    const file = writeFile(dir, 'x.safetensors', safetensorsBytes([
      { name: 'scalar', dtype: 'F32', shape: [] },
      { name: 'empty', dtype: 'F16', shape: [0, 8] },
    ]));
    const header = await readSafetensorsHeader(file);
    expect(header.tensors.map((t) => [t.name, t.byteLength])).toEqual([['scalar', 4], ['empty', 0]]);

    const none = writeFile(dir, 'none.safetensors', assembleSafetensors('{}', new Uint8Array()));
    expect((await readSafetensorsHeader(none)).tensors).toEqual([]);
  });

  it('reads through a file handle the caller already holds', async () => {
    const file = writeFile(folder(), 'h.safetensors', safetensorsBytes([{ name: 't', dtype: 'U8', shape: [3] }]));
    const handle = await open(file, 'r');
    try {
      const header = await readSafetensorsHeader(file, handle);
      expect(header.tensors[0]!.name).toBe('t');
      expect((await handle.stat()).size).toBeGreaterThan(0); // still open: the caller owns it
    } finally {
      await handle.close();
    }
  });
});

describe('readSafetensorsHeader: malformed files', () => {
  const cases: Array<[string, () => Buffer, RegExp]> = [
    ['a file shorter than the length field', () => Buffer.from([1, 2, 3, 4, 5]), /^bad\.safetensors: truncated: the file is 5 bytes, too short for the 8-byte header length$/],
    ['a header length past the end of the file', () => {
      const b = rawFile({ t: { dtype: 'U8', shape: [2], data_offsets: [0, 2] } }, 2);
      b.writeBigUInt64LE(BigInt(b.length), 0);
      return b;
    }, /^bad\.safetensors: truncated: header length \d+ runs past the end of the file \(\d+ bytes\)$/],
    ['an absurd header length', () => {
      const b = Buffer.alloc(16);
      b.writeBigUInt64LE(2n ** 63n, 0);
      return b;
    }, /header length 9223372036854775808 is absurd \(limit 100000000 bytes\)/],
    ['a header that is not JSON', () => assembleSafetensors('{"t": {"dtype": "F32",', new Uint8Array(4)), /^bad\.safetensors: header is not valid JSON \(/],
    ['a header that is not UTF-8', () => assembleSafetensors(Uint8Array.from([0x7b, 0xff, 0xfe, 0x7d]), new Uint8Array()), /header is not valid UTF-8/],
    ['a header that is a list', () => assembleSafetensors('[1, 2]', new Uint8Array()), /header must be a JSON object, got \[1,2\]/],
    ['an unknown dtype', () => rawFile({ w: { dtype: 'F64', shape: [1], data_offsets: [0, 8] } }, 8), /tensor 'w' has unknown dtype "F64" \(kvfocus reads F32, F16, BF16, I32, U8, I64\)/],
    ['a missing dtype', () => rawFile({ w: { shape: [1], data_offsets: [0, 4] } }, 4), /tensor 'w' has no dtype string/],
    ['a negative dimension', () => rawFile({ w: { dtype: 'F32', shape: [2, -1], data_offsets: [0, 8] } }, 8), /tensor 'w' has invalid dimension -1 in shape \[2,-1\]/],
    ['a fractional dimension', () => rawFile({ w: { dtype: 'F32', shape: [1.5], data_offsets: [0, 6] } }, 6), /tensor 'w' has invalid dimension 1\.5/],
    ['a dimension given as a string', () => rawFile({ w: { dtype: 'F32', shape: ['2'], data_offsets: [0, 8] } }, 8), /tensor 'w' has invalid dimension "2"/],
    ['no shape', () => rawFile({ w: { dtype: 'F32', data_offsets: [0, 4] } }, 4), /tensor 'w' has no shape array/],
    ['a shape that does not match the byte range', () => rawFile({ w: { dtype: 'F32', shape: [2, 3], data_offsets: [0, 20] } }, 20),
      /^bad\.safetensors: tensor 'w' has shape \[2, 3\] and dtype F32 \(24 bytes\) but data_offsets span 20 bytes$/],
    ['a shape whose size overflows', () => rawFile({ w: { dtype: 'F32', shape: [2 ** 40, 2 ** 40], data_offsets: [0, 4] } }, 4), /tensor 'w' has shape \[1099511627776, 1099511627776\] and dtype F32 \(4835703278458516698824704 bytes\)/],
    ['offsets past the data section', () => rawFile({ w: { dtype: 'U8', shape: [8], data_offsets: [4, 12] } }, 8),
      /^bad\.safetensors: tensor 'w' data_offsets \[4, 12\] lie outside the data section \(8 bytes\)$/],
    ['reversed offsets', () => rawFile({ w: { dtype: 'U8', shape: [0], data_offsets: [4, 2] } }, 8), /tensor 'w' has invalid data_offsets \[4,2\]/],
    ['negative offsets', () => rawFile({ w: { dtype: 'U8', shape: [2], data_offsets: [-2, 0] } }, 8), /tensor 'w' has invalid data_offsets \[-2,0\]/],
    ['offsets that are not a pair', () => rawFile({ w: { dtype: 'U8', shape: [2], data_offsets: [0] } }, 8), /tensor 'w' must have data_offsets \[begin, end\], got \[0\]/],
    ['overlapping tensors', () => rawFile({
      a: { dtype: 'F32', shape: [4], data_offsets: [0, 16] },
      b: { dtype: 'F32', shape: [2], data_offsets: [8, 16] },
    }, 16), /^bad\.safetensors: tensors 'a' \[0, 16\] and 'b' \[8, 16\] overlap$/],
    ['a tensor entry that is not an object', () => rawFile({ w: [0, 4] }, 4), /tensor 'w' must be an object with dtype, shape and data_offsets/],
    ['non-string metadata', () => rawFile({ __metadata__: { format: 1 } }, 0), /__metadata__\.format must be a string, got 1/],
  ];

  it.each(cases)('rejects %s with a ModelFormatError naming the file', async (_what, build, message) => {
    const file = writeFile(folder(), 'bad.safetensors', build());
    await expectModelFormatError(() => readSafetensorsHeader(file), file, message);
  });

  it('uses the reference implementation\'s header limit', () => {
    expect(MAX_HEADER_BYTES).toBe(100_000_000);
  });

  it('rejects a missing file', async () => {
    const file = path.join(folder(), 'missing.safetensors');
    await expectModelFormatError(() => readSafetensorsHeader(file), file, /missing\.safetensors: file not found/);
  });
});

describe('sharded checkpoints', () => {
  async function writeSharded(dir: string, weightMap: Record<string, string>): Promise<string> {
    writeFile(dir, 'model-00001-of-00002.safetensors', safetensorsBytes([
      { name: 'model.embed_tokens.weight', dtype: 'BF16', shape: [4, 2] },
      { name: 'model.layers.0.input_layernorm.weight', dtype: 'BF16', shape: [2] },
    ]));
    writeFile(dir, 'model-00002-of-00002.safetensors', safetensorsBytes([
      { name: 'model.norm.weight', dtype: 'BF16', shape: [2] },
      { name: 'lm_head.weight', dtype: 'BF16', shape: [4, 2] },
    ]));
    return writeJson(dir, 'model.safetensors.index.json', { metadata: { total_size: 40 }, weight_map: weightMap });
  }
  const goodMap = {
    'model.embed_tokens.weight': 'model-00001-of-00002.safetensors',
    'model.layers.0.input_layernorm.weight': 'model-00001-of-00002.safetensors',
    'model.norm.weight': 'model-00002-of-00002.safetensors',
    'lm_head.weight': 'model-00002-of-00002.safetensors',
  };

  it('resolves every tensor to its shard and absolute byte range', async () => {
    const dir = folder();
    const indexFile = await writeSharded(dir, goodMap);

    const index = await openSafetensors(dir);

    expect(index.source).toBe(indexFile);
    expect(index.size).toBe(4);
    expect(index.files.map((f) => path.basename(f.file))).toEqual(['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']);
    const head = index.tensor('lm_head.weight');
    expect(head.file).toBe(path.join(dir, 'model-00002-of-00002.safetensors'));
    expect(head).toMatchObject({ dtype: 'BF16', shape: [4, 2], byteLength: 16 });
    expect(head.byteOffset).toBe(index.files[1]!.dataOffset + 4);
    expect(index.names().sort()).toEqual(Object.keys(goodMap).sort());
    expect([...index].length).toBe(4);
  });

  it('prefers the shard index over a model.safetensors in the same folder', async () => {
    const dir = folder();
    await writeSharded(dir, goodMap);
    writeFile(dir, 'model.safetensors', safetensorsBytes([{ name: 'other', dtype: 'U8', shape: [1] }]));
    expect((await openSafetensors(dir)).has('other')).toBe(false);
  });

  it('rejects a weight_map entry whose shard does not exist', async () => {
    const dir = folder();
    const indexFile = await writeSharded(dir, { ...goodMap, 'extra.weight': 'model-00003-of-00003.safetensors' });
    await expectModelFormatError(() => openSafetensors(dir), indexFile,
      `model.safetensors.index.json: shard model-00003-of-00003.safetensors (holding 'extra.weight') does not exist in ${dir}`);
  });

  it('rejects a weight_map entry whose shard lacks the tensor', async () => {
    const dir = folder();
    const indexFile = await writeSharded(dir, { ...goodMap, 'model.norm.weight': 'model-00001-of-00002.safetensors' });
    await expectModelFormatError(() => openShardedSafetensors(indexFile), indexFile,
      "model.safetensors.index.json: weight_map puts tensor 'model.norm.weight' in model-00001-of-00002.safetensors, which does not contain it");
  });

  it('rejects shard paths that leave the model folder', async () => {
    const dir = folder();
    const indexFile = await writeSharded(dir, { ...goodMap, 'lm_head.weight': '../elsewhere.safetensors' });
    await expectModelFormatError(() => openSafetensors(dir), indexFile, /weight_map\['lm_head\.weight'\] points outside the model folder: \.\.\/elsewhere\.safetensors/);
  });

  it('rejects an index without a weight_map, or with a non-string shard', async () => {
    const dir = folder();
    const indexFile = writeJson(dir, 'model.safetensors.index.json', { metadata: {} });
    await expectModelFormatError(() => openSafetensors(dir), indexFile, /weight_map must be an object of tensor name -> shard file, got nothing/);
    writeJson(dir, 'model.safetensors.index.json', { weight_map: { a: 3 } });
    await expectModelFormatError(() => openSafetensors(dir), indexFile, /weight_map\['a'\] must be a shard file name, got 3/);
    writeJson(dir, 'model.safetensors.index.json', { weight_map: {} });
    await expectModelFormatError(() => openSafetensors(dir), indexFile, /weight_map is empty/);
  });

  it('rejects an index that is not JSON', async () => {
    const dir = folder();
    const indexFile = writeFile(dir, 'model.safetensors.index.json', '{"weight_map": ');
    await expectModelFormatError(() => openSafetensors(dir), indexFile, /^model\.safetensors\.index\.json: invalid JSON/);
  });

  it('names the shard when a shard itself is malformed', async () => {
    const dir = folder();
    await writeSharded(dir, goodMap);
    const shard = writeFile(dir, 'model-00002-of-00002.safetensors', Buffer.from([0, 1]));
    await expectModelFormatError(() => openSafetensors(dir), shard, /^model-00002-of-00002\.safetensors: truncated/);
  });
});

describe('openSafetensors', () => {
  it('opens a folder with a single model.safetensors, or the file itself', async () => {
    const dir = folder();
    const file = writeFile(dir, 'model.safetensors', safetensorsBytes([{ name: 'w', dtype: 'F32', shape: [2] }]));
    expect((await openSafetensors(dir)).tensor('w').file).toBe(file);
    expect((await openSafetensorsFile(file)).source).toBe(file);
  });

  it('explains a folder without weights', async () => {
    const dir = folder();
    await expectModelFormatError(() => openSafetensors(dir), path.join(dir, 'model.safetensors'),
      `model.safetensors: no weights in ${dir} (looked for model.safetensors.index.json and model.safetensors)`);
  });

  it('names the tensor and the checkpoint when asked for a tensor it lacks', async () => {
    const file = writeFile(folder(), 'model.safetensors', safetensorsBytes([{ name: 'w', dtype: 'F32', shape: [2] }]));
    const index = await openSafetensors(file);
    expect(index.get('nope')).toBeUndefined();
    expect(() => index.tensor('nope')).toThrow(ModelFormatError);
    expect(() => index.tensor('nope')).toThrow("model.safetensors: no tensor named 'nope'");
  });
});
