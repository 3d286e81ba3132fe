// Node-only file access: positioned reads through a FileHandle (the file is never read whole) and a
// streaming writer that emits one tensor at a time, so a 3.5 GB UNet never sits in memory at once.
import { open, rename, rm, stat, readFile, readdir, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { WeightsError } from './errors.js';
import {
  openSafetensors, encodeHeader, checkDataSize, viewBytes,
  type ByteSource, type SafetensorsFile, type TensorToWrite,
} from './safetensors.js';
import type { FolderAccess } from './model-folder.js';

function ioError(path: string, e: unknown): WeightsError {
  const code = (e as NodeJS.ErrnoException)?.code;
  if (code === 'ENOENT' || code === 'ENOTDIR') {
    return new WeightsError('NOT_FOUND', 'no such file or directory', { file: path, expected: 'an existing path', found: 'nothing at that path', cause: e });
  }
  return new WeightsError('IO', `${(e as Error)?.message ?? e}`, { file: path, cause: e });
}

export async function fileSource(path: string): Promise<ByteSource> {
  let fh: FileHandle;
  try {
    const st = await stat(path);
    if (!st.isFile()) {
      throw new WeightsError('NOT_FOUND', 'not a regular file', { file: path, expected: 'a file', found: st.isDirectory() ? 'a directory' : 'a special file' });
    }
    fh = await open(path, 'r');
  } catch (e) {
    throw e instanceof WeightsError ? e : ioError(path, e);
  }
  const size = (await fh.stat()).size;
  let closed = false;
  return {
    name: path,
    size,
    async read(offset, length) {
      if (closed) throw new WeightsError('IO', 'read after close', { file: path });
      if (offset < 0 || length < 0 || offset + length > size) {
        throw new WeightsError('TRUNCATED', 'read outside the file', { file: path, expected: `range within ${size} bytes`, found: `[${offset}, ${offset + length})` });
      }
      // A fresh buffer per read: 8-byte aligned, so typed views need no copy.
      const buf = new Uint8Array(length);
      let done = 0;
      while (done < length) {
        const { bytesRead } = await fh.read(buf, done, Math.min(length - done, 1 << 30), offset + done);
        if (bytesRead === 0) {
          throw new WeightsError('TRUNCATED', 'file shrank while reading', { file: path, expected: `${length} bytes at ${offset}`, found: `${done} bytes` });
        }
        done += bytesRead;
      }
      return buf;
    },
    async close() {
      if (!closed) {
        closed = true;
        await fh.close();
      }
    },
  };
}

export async function openSafetensorsFile(path: string): Promise<SafetensorsFile> {
  const src = await fileSource(path);
  try {
    return await openSafetensors(src);
  } catch (e) {
    await src.close?.();
    throw e;
  }
}

/** Tensor data given directly, or produced on demand (called once, right before it is written). */
export type TensorData = ArrayBufferView | (() => ArrayBufferView | Promise<ArrayBufferView>);

export async function writeSafetensorsFile(
  path: string,
  tensors: Array<TensorToWrite & { data: TensorData }>,
  metadata?: Record<string, string>,
): Promise<{ bytes: number }> {
  const header = encodeHeader(tensors, metadata, path);
  // Write to a temporary name and rename at the end: a crash never leaves a half file that looks valid.
  const tmp = `${path}.partial`;
  let fh: FileHandle | undefined;
  try {
    fh = await open(tmp, 'w');
    await writeAll(fh, header);
    let total = header.length;
    for (const t of tensors) {
      const data = typeof t.data === 'function' ? await t.data() : t.data;
      checkDataSize(t, data, path);
      await writeAll(fh, viewBytes(data));
      total += data.byteLength;
    }
    await fh.close();
    fh = undefined;
    await rename(tmp, path);
    return { bytes: total };
  } catch (e) {
    await fh?.close().catch(() => {});
    await rm(tmp, { force: true }).catch(() => {});
    throw e instanceof WeightsError ? e : ioError(path, e);
  }
}

async function writeAll(fh: FileHandle, bytes: Uint8Array): Promise<void> {
  let done = 0;
  while (done < bytes.length) {
    const { bytesWritten } = await fh.write(bytes, done, Math.min(bytes.length - done, 1 << 30));
    done += bytesWritten;
  }
}

/** A local directory as a FolderAccess (see model-folder.ts). */
export function nodeFolder(dir: string): FolderAccess {
  return {
    name: dir,
    async readText(rel) {
      try {
        return await readFile(join(dir, rel), 'utf8');
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
        throw ioError(join(dir, rel), e);
      }
    },
    async openSource(rel) {
      try {
        return await fileSource(join(dir, rel));
      } catch (e) {
        if (e instanceof WeightsError && e.code === 'NOT_FOUND') return undefined;
        throw e;
      }
    },
    async list() {
      try {
        return await readdir(dir);
      } catch (e) {
        throw ioError(dir, e);
      }
    },
  };
}
