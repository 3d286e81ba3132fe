import { describe, it, expect } from 'vitest';
import {
  openSafetensors, encodeSafetensors, bytesSource, blobSource, httpSource, openSharded,
  f16ToF32, f32ToF16Bits, f32ToBf16Bits, bf16BitsToF32, type StDtype,
} from '../../weights-tools/safetensors.js';
import { openSafetensorsFile } from '../../weights-tools/node-source.js';
import { expectWeightsError, rawFile, GOLDEN } from './helpers.js';

const F = 'test.safetensors';
const open = (bytes: Uint8Array, name = F) => openSafetensors(bytesSource(bytes, name));

describe('f16 / bf16 conversion', () => {
  it('decodes known half values', () => {
    expect(f16ToF32(0x3c00)).toBe(1);
    expect(f16ToF32(0xc000)).toBe(-2);
    expect(f16ToF32(0x7bff)).toBe(65504);
    expect(f16ToF32(0x0001)).toBe(2 ** -24);
    expect(f16ToF32(0x03ff)).toBe(1023 * 2 ** -24);
    expect(f16ToF32(0x0400)).toBe(2 ** -14);
    expect(f16ToF32(0x7c00)).toBe(Infinity);
    expect(f16ToF32(0xfc00)).toBe(-Infinity);
    expect(f16ToF32(0x7e00)).toBeNaN();
    expect(Object.is(f16ToF32(0x8000), -0)).toBe(true);
  });

  it('round-trips every half bit pattern exactly (NaN stays NaN)', () => {
    const all = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) all[h] = f16ToF32(h);
    const back = f32ToF16Bits(all);
    for (let h = 0; h < 65536; h++) {
      if (Number.isNaN(all[h])) expect(Number.isNaN(f16ToF32(back[h]))).toBe(true);
      else if (back[h] !== h) expect.fail(`0x${h.toString(16)} came back as 0x${back[h].toString(16)}`);
    }
  });

  it('rounds to nearest even, overflows to inf, handles subnormals', () => {
    const conv = (x: number) => f32ToF16Bits(Float32Array.of(x))[0];
    expect(conv(1 + 2 ** -11)).toBe(0x3c00); // tie -> even (down)
    expect(conv(1 + 3 * 2 ** -11)).toBe(0x3c02); // tie -> even (up)
    expect(conv(1 + 2 ** -11 + 2 ** -20)).toBe(0x3c01); // above the tie
    expect(conv(65519)).toBe(0x7bff);
    expect(conv(65520)).toBe(0x7c00); // tie between 65504 and 2^16 -> even = inf
    expect(conv(1e6)).toBe(0x7c00);
    expect(conv(-1e6)).toBe(0xfc00);
    expect(conv(2 ** -25)).toBe(0x0000); // tie -> 0
    expect(conv(2 ** -25 * 1.0001)).toBe(0x0001);
    expect(conv(3 * 2 ** -25)).toBe(0x0002); // 1.5 ulp -> 2
    expect(conv(1023.5 * 2 ** -24)).toBe(0x0400); // tie -> smallest normal
    expect(conv(1e-30)).toBe(0);
    expect(conv(-0)).toBe(0x8000);
    expect(Number.isNaN(f16ToF32(conv(NaN)))).toBe(true);
  });

  it('picks the nearest half for random floats (ties to even)', () => {
    let s = 12345;
    const rnd = () => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32);
    const xs = Float32Array.from({ length: 20000 }, () => (rnd() - 0.5) * 2 ** (rnd() * 40 - 26));
    const hs = f32ToF16Bits(xs);
    for (let i = 0; i < xs.length; i++) {
      const x = xs[i], h = hs[i];
      const err = Math.abs(f16ToF32(h) - x);
      for (const nb of [h - 1, h + 1]) {
        if (nb < 0 || nb > 0xffff || (nb & 0x7c00) === 0x7c00 || ((nb ^ h) & 0x8000)) continue;
        const e2 = Math.abs(f16ToF32(nb) - x);
        if (e2 < err || (e2 === err && (h & 1))) expect.fail(`x=${x}: got 0x${h.toString(16)}, neighbour 0x${nb.toString(16)} is nearer or even`);
      }
    }
  });

  it('converts bf16 both ways', () => {
    expect([...bf16BitsToF32(Uint16Array.of(0x3f80, 0xc000, 0x7f80))]).toEqual([1, -2, Infinity]);
    const b = f32ToBf16Bits(Float32Array.of(1, 1 + 2 ** -8, 1 + 3 * 2 ** -8, NaN));
    expect([...b.slice(0, 3)]).toEqual([0x3f80, 0x3f80, 0x3f82]);
    expect(Number.isNaN(bf16BitsToF32(b.slice(3))[0])).toBe(true);
  });
});

const SAMPLES: Record<string, ArrayBufferView> = {
  F64: Float64Array.of(1.5, -2.25, 1e-300, 3),
  F32: Float32Array.of(1.5, -2.25, 0.1, 3),
  F16: Uint16Array.of(0x3c00, 0xc000, 0x3555, 0x0001),
  BF16: Uint16Array.of(0x3f80, 0xc000, 0x3dcd, 0x4040),
  I64: BigInt64Array.of(0n, -5n, 77n, 2n ** 40n),
  I32: Int32Array.of(0, -5, 77, 2 ** 30),
  I16: Int16Array.of(0, -5, 77, 300),
  I8: Int8Array.of(0, -5, 77, 127),
  U8: Uint8Array.of(0, 5, 77, 255),
  BOOL: Uint8Array.of(0, 1, 1, 0),
};

describe('writer / reader round trip', () => {
  it('round-trips every dtype with metadata, in the given order', async () => {
    const names = Object.keys(SAMPLES).reverse();
    const tensors = names.map((dt) => ({ name: `t.${dt}`, dtype: dt as StDtype, shape: [2, 2], data: SAMPLES[dt] }));
    tensors.push({ name: 'scalar', dtype: 'F32', shape: [], data: Float32Array.of(7) });
    tensors.push({ name: 'empty', dtype: 'F32', shape: [0, 3], data: new Float32Array(0) });
    const bytes = encodeSafetensors(tensors, { format: 'pt', note: 'x' });
    const hdrLen = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    expect((8 + hdrLen) % 8).toBe(0);
    const f = await open(bytes);
    expect(f.metadata).toEqual({ format: 'pt', note: 'x' });
    expect([...f.tensors.keys()]).toEqual(tensors.map((t) => t.name));
    for (const t of tensors) {
      const raw = await f.readBytes(t.name);
      expect([...raw]).toEqual([...new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength)]);
      expect(f.tensors.get(t.name)!.shape).toEqual(t.shape);
    }
    expect([...(await f.readF32('t.F64'))]).toEqual([1.5, -2.25, 0, 3]);
    expect([...(await f.readF32('t.F16'))]).toEqual([1, -2, f16ToF32(0x3555), 2 ** -24]);
    expect([...(await f.readF32('t.BF16'))].slice(0, 2)).toEqual([1, -2]);
    expect([...(await f.readF32('t.I64'))]).toEqual([0, -5, 77, 2 ** 40]);
    expect([...(await f.readF32('t.U8'))]).toEqual([0, 5, 77, 255]);
    expect([...(await f.readI64('t.I64'))]).toEqual([0n, -5n, 77n, 2n ** 40n]);
    expect([...(await f.readI64('t.I32'))]).toEqual([0n, -5n, 77n, 2n ** 30n]);
    expect([...(await f.readAsF16Bits('t.F16'))]).toEqual([...(SAMPLES.F16 as Uint16Array)]);
    expect([...(await f.readAsF16Bits('t.F32'))].map(f16ToF32)).toEqual([1.5, -2.25, f16ToF32(0x2e66), 3]);
    expect([...(await f.readAsF16Bits('t.BF16'))].slice(0, 2)).toEqual([0x3c00, 0xc000]);
    expect([...(await f.readF32('scalar'))]).toEqual([7]);
    expect((await f.readF32('empty')).length).toBe(0);
    await expectWeightsError(() => f.readI64('t.F32'), 'BAD_DTYPE', { file: F, tensor: 't.F32' });
    await expectWeightsError(() => f.readAsF16Bits('t.I32'), 'BAD_DTYPE', { file: F, tensor: 't.I32' });
    await expectWeightsError(() => f.readF32('nope'), 'MISSING_TENSOR', { file: F, tensor: 'nope' });
  });

  it('keeps awkward names and the given order (integer-like keys, __proto__, unicode)', async () => {
    const names = ['z', '10', '__proto__', 'constructor', '2', 'ünï.cödé'];
    const f = await open(encodeSafetensors(names.map((name, i) => ({ name, dtype: 'U8' as const, shape: [1], data: Uint8Array.of(i) }))));
    expect([...f.tensors.keys()]).toEqual(names);
    for (const [i, n] of names.entries()) expect([...(await f.readBytes(n))]).toEqual([i]);
  });

  it('reads the golden CLIP file, including the I64 position_ids buffer', async () => {
    const path = `${GOLDEN}/models/clip_text_sd1/model.safetensors`;
    const f = await openSafetensorsFile(path);
    expect([...(await f.readI64('text_model.embeddings.position_ids'))]).toEqual(Array.from({ length: 77 }, (_, i) => BigInt(i)));
    expect((await f.readF32('text_model.embeddings.token_embedding.weight')).length).toBe(1000 * 32);
    await f.close();
  });

  it('rejects inconsistent writer input', async () => {
    await expectWeightsError(() => encodeSafetensors([{ name: 'a', dtype: 'F32', shape: [3], data: new Float32Array(2) }]), 'SIZE_MISMATCH', { tensor: 'a' });
    await expectWeightsError(() => encodeSafetensors([
      { name: 'a', dtype: 'F32', shape: [1], data: new Float32Array(1) },
      { name: 'a', dtype: 'F32', shape: [1], data: new Float32Array(1) },
    ]), 'DUPLICATE', { tensor: 'a' });
  });
});

describe('strict reader: every bad input is a WeightsError naming file and tensor', () => {
  const good = () => encodeSafetensors([
    { name: 'a', dtype: 'F32', shape: [2], data: Float32Array.of(1, 2) },
    { name: 'b', dtype: 'F16', shape: [2, 2], data: new Uint16Array(4) },
  ]);
  const entry = (dtype: string, shape: unknown, offs: unknown) => ({ dtype, shape, data_offsets: offs });

  it('truncated file', async () => {
    const g = good();
    await expectWeightsError(() => open(g.subarray(0, g.length - 1)), 'TRUNCATED', { file: F, tensor: 'b' });
    await expectWeightsError(() => open(g.subarray(0, 5)), 'TRUNCATED', { file: F });
    await expectWeightsError(() => open(g.subarray(0, 20)), 'TRUNCATED', { file: F });
  });

  it('header length larger than the file or than 100 MB', async () => {
    await expectWeightsError(() => open(rawFile({}, 0, 1000n)), 'TRUNCATED', { file: F });
    await expectWeightsError(() => open(rawFile({}, 0, 200_000_000n)), 'HEADER_TOO_LARGE', { file: F });
    await expectWeightsError(() => open(rawFile({}, 0, 2n ** 63n)), 'HEADER_TOO_LARGE', { file: F });
  });

  it('header not JSON, not UTF-8, or not an object', async () => {
    await expectWeightsError(() => open(rawFile('{"a": ')), 'HEADER_NOT_JSON', { file: F });
    await expectWeightsError(() => open(rawFile('[1,2]')), 'HEADER_NOT_JSON', { file: F });
    await expectWeightsError(() => open(rawFile('null')), 'HEADER_NOT_JSON', { file: F });
    await expectWeightsError(() => open(rawFile('42')), 'HEADER_NOT_JSON', { file: F });
    const bad = rawFile('{"a":1}');
    bad[10] = 0xff;
    await expectWeightsError(() => open(bad), 'HEADER_NOT_JSON', { file: F });
  });

  it('bad metadata and entries', async () => {
    await expectWeightsError(() => open(rawFile({ __metadata__: { a: 1 } })), 'BAD_METADATA', { file: F, tensor: '__metadata__' });
    await expectWeightsError(() => open(rawFile({ __metadata__: [] })), 'BAD_METADATA', { file: F });
    await expectWeightsError(() => open(rawFile({ w: 5 })), 'BAD_ENTRY', { file: F, tensor: 'w' });
  });

  it('unknown dtype', async () => {
    await expectWeightsError(() => open(rawFile({ w: entry('F24', [1], [0, 3]) }, 3)), 'BAD_DTYPE', { file: F, tensor: 'w' });
    await expectWeightsError(() => open(rawFile({ w: { shape: [1], data_offsets: [0, 4] } }, 4)), 'BAD_DTYPE', { file: F, tensor: 'w' });
  });

  it('bad shapes', async () => {
    await expectWeightsError(() => open(rawFile({ w: entry('F32', [-1], [0, 4]) }, 4)), 'BAD_SHAPE', { file: F, tensor: 'w' });
    await expectWeightsError(() => open(rawFile({ w: entry('F32', [1.5], [0, 4]) }, 4)), 'BAD_SHAPE', { file: F, tensor: 'w' });
    await expectWeightsError(() => open(rawFile({ w: entry('F32', '4', [0, 4]) }, 4)), 'BAD_SHAPE', { file: F, tensor: 'w' });
    await expectWeightsError(() => open(rawFile({ w: entry('F32', [2 ** 40, 2 ** 40], [0, 4]) }, 4)), 'SIZE_MISMATCH', { file: F, tensor: 'w' });
  });

  it('data_offsets malformed or out of range', async () => {
    await expectWeightsError(() => open(rawFile({ w: entry('F32', [1], [4, 0]) }, 4)), 'BAD_OFFSETS', { file: F, tensor: 'w' });
    await expectWeightsError(() => open(rawFile({ w: entry('F32', [1], [0]) }, 4)), 'BAD_OFFSETS', { file: F, tensor: 'w' });
    await expectWeightsError(() => open(rawFile({ w: entry('F32', [1], [-4, 0]) }, 4)), 'BAD_OFFSETS', { file: F, tensor: 'w' });
    await expectWeightsError(() => open(rawFile({ w: entry('F32', [1], ['0', '4']) }, 4)), 'BAD_OFFSETS', { file: F, tensor: 'w' });
    await expectWeightsError(() => open(rawFile({ a: entry('F32', [1], [0, 4]), w: entry('F32', [1], [100, 104]) }, 4)), 'BAD_OFFSETS', { file: F, tensor: 'w' });
  });

  it('offsets not matching shape x dtype size', async () => {
    await expectWeightsError(() => open(rawFile({ w: entry('F32', [2], [0, 4]) }, 4)), 'SIZE_MISMATCH', { file: F, tensor: 'w' });
    await expectWeightsError(() => open(rawFile({ w: entry('F16', [3], [0, 8]) }, 8)), 'SIZE_MISMATCH', { file: F, tensor: 'w' });
  });

  it('overlapping tensors', async () => {
    await expectWeightsError(() => open(rawFile({ a: entry('F32', [2], [0, 8]), w: entry('F32', [1], [4, 8]) }, 8)), 'OVERLAP', { file: F, tensor: 'w' });
    await expectWeightsError(() => open(rawFile({ a: entry('F32', [1], [0, 4]), w: entry('F32', [1], [0, 4]) }, 4)), 'OVERLAP', { file: F });
  });

  it('gaps: a hole, unused leading bytes, trailing bytes', async () => {
    await expectWeightsError(() => open(rawFile({ a: entry('F32', [1], [0, 4]), w: entry('F32', [1], [8, 12]) }, 12)), 'GAP', { file: F, tensor: 'w' });
    await expectWeightsError(() => open(rawFile({ w: entry('F32', [1], [4, 8]) }, 8)), 'GAP', { file: F, tensor: 'w' });
    await expectWeightsError(() => open(rawFile({ w: entry('F32', [1], [0, 4]) }, 12)), 'GAP', { file: F, tensor: 'w' });
    await expectWeightsError(() => open(rawFile({}, 4)), 'GAP', { file: F });
  });

  it('duplicate names (JSON.parse would hide them)', async () => {
    const text = '{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}';
    await expectWeightsError(() => open(rawFile(text, 4)), 'DUPLICATE', { file: F, tensor: 'w' });
    const esc = '{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"\\u0077":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}';
    await expectWeightsError(() => open(rawFile(esc, 4)), 'DUPLICATE', { file: F, tensor: 'w' });
    const inner = '{"w":{"dtype":"F32","dtype":"F16","shape":[1],"data_offsets":[0,4]}}';
    await expectWeightsError(() => open(rawFile(inner, 4)), 'DUPLICATE', { file: F, tensor: 'w' });
    // Keys that only look alike inside string values are not duplicates.
    const ok = '{"__metadata__":{"x":"\\"w\\":"},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}';
    expect((await open(rawFile(ok, 4))).tensors.size).toBe(1);
  });

  it('accepts an empty file with an empty header and header padding', async () => {
    expect((await open(rawFile('{}'))).tensors.size).toBe(0);
    expect((await open(rawFile('{"w":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}      ', 2))).tensors.size).toBe(1);
  });
});

describe('byte sources', () => {
  const bytes = encodeSafetensors([{ name: 'x', dtype: 'F32', shape: [3], data: Float32Array.of(1, 2, 3) }]);

  it('blobSource reads slices of a Blob', async () => {
    const f = await openSafetensors(blobSource(new Blob([bytes]), 'blob.safetensors'));
    expect([...(await f.readF32('x'))]).toEqual([1, 2, 3]);
    expect(f.name).toBe('blob.safetensors');
  });

  function server(opts: { honorRange: boolean; headLength: boolean; status?: number }) {
    const calls: string[] = [];
    const fetchImpl = async (url: string, init?: RequestInit) => {
      const range = (init?.headers as Record<string, string> | undefined)?.Range;
      calls.push(`${init?.method ?? 'GET'} ${range ?? ''}`);
      if (opts.status) return new Response('nope', { status: opts.status });
      if (init?.method === 'HEAD') return new Response(null, { headers: opts.headLength ? { 'content-length': String(bytes.length) } : {} });
      const m = range && /^bytes=(\d+)-(\d+)$/.exec(range);
      if (!m || !opts.honorRange) return new Response(bytes, { status: 200 });
      const [a, b] = [Number(m[1]), Number(m[2])];
      return new Response(bytes.slice(a, b + 1), { status: 206, headers: { 'content-range': `bytes ${a}-${b}/${bytes.length}` } });
    };
    return { fetchImpl, calls };
  }

  it('httpSource uses HEAD then Range requests', async () => {
    const s = server({ honorRange: true, headLength: true });
    const f = await openSafetensors(await httpSource('http://x/model.safetensors', s.fetchImpl));
    expect([...(await f.readF32('x'))]).toEqual([1, 2, 3]);
    expect(s.calls[0]).toBe('HEAD ');
    expect(s.calls.slice(1).every((c) => c.startsWith('GET bytes='))).toBe(true);
  });

  it('httpSource learns the size from a ranged probe when HEAD has no length', async () => {
    const s = server({ honorRange: true, headLength: false });
    const src = await httpSource('http://x/m', s.fetchImpl);
    expect(src.size).toBe(bytes.length);
  });

  it('httpSource fails clearly when the server ignores Range', async () => {
    const s = server({ honorRange: false, headLength: true });
    const src = await httpSource('http://x/m.safetensors', s.fetchImpl);
    const e = await expectWeightsError(() => openSafetensors(src), 'RANGE_UNSUPPORTED', { file: 'http://x/m.safetensors' });
    expect(e.message).toMatch(/ignored the Range header/);
    await expectWeightsError(() => httpSource('http://x/m', server({ honorRange: false, headLength: false }).fetchImpl), 'RANGE_UNSUPPORTED', { file: 'http://x/m' });
  });

  it('httpSource maps 404 to NOT_FOUND', async () => {
    await expectWeightsError(() => httpSource('http://x/missing', server({ honorRange: true, headLength: true, status: 404 }).fetchImpl), 'NOT_FOUND', { file: 'http://x/missing' });
  });
});

describe('sharded checkpoints', () => {
  const shardA = encodeSafetensors([{ name: 'a', dtype: 'F32', shape: [1], data: Float32Array.of(1) }]);
  const shardB = encodeSafetensors([{ name: 'b', dtype: 'F32', shape: [1], data: Float32Array.of(2) }]);
  const files: Record<string, Uint8Array> = { 'm-1.safetensors': shardA, 'm-2.safetensors': shardB };
  const openShard = async (f: string) => {
    if (!files[f]) throw new Error(`no ${f}`);
    return openSafetensors(bytesSource(files[f], f));
  };
  const index = (wm: Record<string, string>) => JSON.stringify({ metadata: { total_size: 8 }, weight_map: wm });

  it('reads across shards with one API', async () => {
    const s = await openSharded(index({ a: 'm-1.safetensors', b: 'm-2.safetensors' }), openShard);
    expect([...s.tensors.keys()].sort()).toEqual(['a', 'b']);
    expect([...(await s.readF32('b'))]).toEqual([2]);
    expect(s.shardOf('a').name).toBe('m-1.safetensors');
    await s.close();
  });

  it('rejects an index that disagrees with the shards', async () => {
    await expectWeightsError(() => openSharded(index({ a: 'm-1.safetensors', b: 'm-1.safetensors' }), openShard), 'MISSING_TENSOR', { file: 'm-1.safetensors', tensor: 'b' });
    await expectWeightsError(() => openSharded(index({ a: 'm-1.safetensors' }), async (f) => openSafetensors(bytesSource(encodeSafetensors([
      { name: 'a', dtype: 'F32', shape: [1], data: Float32Array.of(1) },
      { name: 'z', dtype: 'F32', shape: [1], data: Float32Array.of(1) },
    ]), f))), 'UNEXPECTED_TENSOR', { file: 'm-1.safetensors', tensor: 'z' });
    await expectWeightsError(() => openSharded('{"weight_map": 3}', openShard, 'idx.json'), 'BAD_INDEX', { file: 'idx.json' });
    await expectWeightsError(() => openSharded('nope', openShard, 'idx.json'), 'BAD_INDEX', { file: 'idx.json' });
  });
});
