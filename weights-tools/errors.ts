// Typed error for everything that can go wrong while reading, writing or checking weight files.
// The message always says which file (and tensor, when there is one) and what was expected vs found,
// so a user can fix the input without reading a stack trace.

export type WeightsErrorCode =
  | 'TRUNCATED'
  | 'HEADER_TOO_LARGE'
  | 'HEADER_NOT_JSON'
  | 'BAD_METADATA'
  | 'BAD_ENTRY'
  | 'BAD_DTYPE'
  | 'BAD_SHAPE'
  | 'BAD_OFFSETS'
  | 'OVERLAP'
  | 'GAP'
  | 'SIZE_MISMATCH'
  | 'DUPLICATE'
  | 'MISSING_TENSOR'
  | 'UNEXPECTED_TENSOR'
  | 'SHAPE_MISMATCH'
  | 'BAD_CONFIG'
  | 'BAD_INDEX'
  | 'NOT_FOUND'
  | 'RANGE_UNSUPPORTED'
  | 'IO';

export interface WeightsErrorDetails {
  file?: string;
  tensor?: string;
  expected?: string;
  found?: string;
  cause?: unknown;
}

export class WeightsError extends Error {
  readonly code: WeightsErrorCode;
  readonly file?: string;
  readonly tensor?: string;
  readonly expected?: string;
  readonly found?: string;
  /** Bad weight files are the user's input, so the CLI reports them as user errors (exit code 1). */
  readonly userError = true;

  constructor(code: WeightsErrorCode, what: string, details: WeightsErrorDetails = {}) {
    super(formatMessage(code, what, details), details.cause === undefined ? undefined : { cause: details.cause });
    this.name = 'WeightsError';
    this.code = code;
    this.file = details.file;
    this.tensor = details.tensor;
    this.expected = details.expected;
    this.found = details.found;
  }
}

function formatMessage(code: WeightsErrorCode, what: string, d: WeightsErrorDetails): string {
  const where: string[] = [];
  if (d.file !== undefined) where.push(`file "${d.file}"`);
  if (d.tensor !== undefined) where.push(`tensor "${d.tensor}"`);
  let msg = `${code}: ${where.length ? where.join(', ') + ': ' : ''}${what}`;
  if (d.expected !== undefined || d.found !== undefined) {
    msg += ` (expected ${d.expected ?? '?'}, found ${d.found ?? '?'})`;
  }
  return msg;
}

export function isWeightsError(e: unknown, code?: WeightsErrorCode): e is WeightsError {
  return e instanceof WeightsError && (code === undefined || e.code === code);
}
