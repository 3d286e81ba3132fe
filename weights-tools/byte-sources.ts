// Browser-safe ByteSources: in-memory bytes, Blob/File, and HTTP with Range requests.
import { WeightsError } from './errors.js';
import type { ByteSource } from './safetensors.js';

function checkRange(name: string, size: number, offset: number, length: number): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > size) {
    throw new WeightsError('TRUNCATED', 'read outside the file', {
      file: name, expected: `range within ${size} bytes`, found: `[${offset}, ${offset + length})`,
    });
  }
}

export function bytesSource(bytes: Uint8Array, name = '<memory>'): ByteSource {
  return {
    name,
    size: bytes.byteLength,
    async read(offset, length) {
      checkRange(name, bytes.byteLength, offset, length);
      return bytes.slice(offset, offset + length);
    },
  };
}

export function blobSource(blob: Blob, name?: string): ByteSource {
  const label = name ?? ((blob as { name?: string }).name || '<blob>');
  return {
    name: label,
    size: blob.size,
    async read(offset, length) {
      checkRange(label, blob.size, offset, length);
      return new Uint8Array(await blob.slice(offset, offset + length).arrayBuffer());
    },
  };
}

type FetchLike = (input: string, init?: RequestInit) => Promise<Response>;

/**
 * A remote file read with HTTP Range requests. The size comes from HEAD (Content-Length), or from
 * the Content-Range of a one-byte ranged GET when HEAD gives none. A server that ignores Range
 * would send the whole multi-GB file for every tensor, so that is an error, not a slow path.
 */
export async function httpSource(url: string, fetchImpl: FetchLike = fetch): Promise<ByteSource> {
  const size = await remoteSize(url, fetchImpl);
  return {
    name: url,
    size,
    async read(offset, length) {
      checkRange(url, size, offset, length);
      if (length === 0) return new Uint8Array(0);
      const res = await request(url, fetchImpl, { headers: { Range: `bytes=${offset}-${offset + length - 1}` } });
      if (res.status !== 206) {
        await res.body?.cancel().catch(() => {});
        throw new WeightsError('RANGE_UNSUPPORTED', 'server ignored the Range header', {
          file: url, expected: 'HTTP 206 Partial Content', found: `HTTP ${res.status}`,
        });
      }
      const start = /^bytes (\d+)-/.exec(res.headers.get('content-range') ?? '')?.[1];
      if (start !== undefined && Number(start) !== offset) {
        await res.body?.cancel().catch(() => {});
        throw new WeightsError('RANGE_UNSUPPORTED', 'server answered a different range', {
          file: url, expected: `bytes ${offset}-`, found: res.headers.get('content-range') ?? '',
        });
      }
      const buf = new Uint8Array(await res.arrayBuffer());
      if (buf.byteLength !== length) {
        throw new WeightsError('TRUNCATED', 'short ranged response', {
          file: url, expected: `${length} bytes`, found: `${buf.byteLength} bytes`,
        });
      }
      return buf;
    },
  };
}

async function request(url: string, fetchImpl: FetchLike, init: RequestInit): Promise<Response> {
  let res: Response;
  try {
    res = await fetchImpl(url, init);
  } catch (e) {
    throw new WeightsError('IO', `request failed: ${(e as Error)?.message ?? e}`, { file: url, cause: e });
  }
  if (res.status === 404 || res.status === 410) {
    await res.body?.cancel().catch(() => {});
    throw new WeightsError('NOT_FOUND', 'no such remote file', { file: url, expected: 'HTTP 200/206', found: `HTTP ${res.status}` });
  }
  if (!res.ok) {
    await res.body?.cancel().catch(() => {});
    throw new WeightsError('IO', 'HTTP error', { file: url, expected: 'HTTP 200/206', found: `HTTP ${res.status}` });
  }
  return res;
}

async function remoteSize(url: string, fetchImpl: FetchLike): Promise<number> {
  const head = await request(url, fetchImpl, { method: 'HEAD' });
  const len = head.headers.get('content-length');
  if (len !== null && /^\d+$/.test(len) && head.headers.get('content-encoding') === null) return Number(len);
  const probe = await request(url, fetchImpl, { headers: { Range: 'bytes=0-0' } });
  await probe.body?.cancel().catch(() => {});
  const total = /\/(\d+)$/.exec(probe.headers.get('content-range') ?? '')?.[1];
  if (probe.status !== 206 || total === undefined) {
    throw new WeightsError('RANGE_UNSUPPORTED', 'cannot learn the file size: no Content-Length on HEAD and no ranged GET', {
      file: url, expected: 'HTTP 206 with Content-Range: bytes 0-0/<size>', found: `HTTP ${probe.status} ${probe.headers.get('content-range') ?? ''}`.trim(),
    });
  }
  return Number(total);
}
