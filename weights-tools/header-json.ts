// JSON.parse silently keeps the last of two equal keys, which would hide a corrupted or tampered
// safetensors header. This scanner walks already-valid JSON text and reports the first repeated key.

export interface DuplicateKey {
  key: string;
  /** The top-level key the duplicate sits under (the key itself when it is top-level). */
  topKey: string;
  depth: number;
}

interface Frame {
  isObject: boolean;
  expectKey: boolean;
  keys: Set<string>;
}

/** `text` must already be valid JSON (callers run JSON.parse first). */
export function findDuplicateKey(text: string): DuplicateKey | undefined {
  const stack: Frame[] = [];
  let topKey = '';
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      let j = i + 1;
      while (j < text.length && text.charCodeAt(j) !== 0x22) j += text.charCodeAt(j) === 0x5c /* \ */ ? 2 : 1;
      const top = stack[stack.length - 1];
      if (top?.isObject && top.expectKey) {
        const key = JSON.parse(text.slice(i, j + 1)) as string;
        if (stack.length === 1) topKey = key;
        if (top.keys.has(key)) return { key, topKey, depth: stack.length };
        top.keys.add(key);
        top.expectKey = false;
      }
      i = j;
    } else if (c === 0x7b /* { */) {
      stack.push({ isObject: true, expectKey: true, keys: new Set() });
    } else if (c === 0x5b /* [ */) {
      stack.push({ isObject: false, expectKey: false, keys: new Set() });
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      stack.pop();
    } else if (c === 0x2c /* , */) {
      const top = stack[stack.length - 1];
      if (top?.isObject) top.expectKey = true;
    }
  }
  return undefined;
}
