/**
 * CLIP byte-level BPE tokenizer (the one Stable Diffusion's text encoders use), built from the
 * `vocab.json` + `merges.txt` pair that diffusers folders ship under `tokenizer/`.
 *
 * Behaviour target: transformers' slow `CLIPTokenizer` with ftfy installed, which is also what
 * openai's `simple_tokenizer` produces:
 *   special-token split -> whitespace_clean(ftfy.fix_text(chunk)).lower() -> CLIP regex -> bytes ->
 *   unicode -> BPE with '</w>' word ends -> ids; BOS + ids + EOS, truncated / padded to 77.
 *
 * Browser-safe: no Node imports; only TextEncoder/TextDecoder and String.prototype.normalize.
 */

// ---------------------------------------------------------------------------------------------
// Text clean-up: the parts of ftfy 6.1.1 `fix_text` (default config) that matter for prompts.
// ---------------------------------------------------------------------------------------------

/** Windows-1252 bytes 0x80..0x9F as code points. Undefined bytes map to the C1 control of the
 *  same value ("sloppy" decoding), which is also what HTML numeric references 0x80..0x9F mean. */
const CP1252_HIGH = [
  0x20ac, 0x81, 0x201a, 0x192, 0x201e, 0x2026, 0x2020, 0x2021, 0x2c6, 0x2030, 0x160, 0x2039, 0x152, 0x8d, 0x17d,
  0x8f, 0x90, 0x2018, 0x2019, 0x201c, 0x201d, 0x2022, 0x2013, 0x2014, 0x2dc, 0x2122, 0x161, 0x203a, 0x153, 0x9d,
  0x17e, 0x178,
];

/** code point -> byte for the sloppy Windows-1252 codec (0x00..0x7F, 0xA0..0xFF, the table above). */
const SLOPPY_1252_ENCODE = new Map<number, number>();
for (let b = 0; b < 256; b++) {
  SLOPPY_1252_ENCODE.set(b >= 0x80 && b < 0xa0 ? CP1252_HIGH[b - 0x80] : b, b);
}

/** Latin-1 encoding, or null when some character is outside U+0000..U+00FF. */
function encodeLatin1(text: string): Uint8Array | null {
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c > 0xff) return null;
    out[i] = c;
  }
  return out;
}

/** Sloppy Windows-1252 encoding, or null when some character has no byte. */
function encodeSloppy1252(text: string): Uint8Array | null {
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) {
    const b = SLOPPY_1252_ENCODE.get(text.charCodeAt(i));
    if (b === undefined) return null;
    out[i] = b;
  }
  return out;
}

// ignoreBOM keeps a decoded U+FEFF in the text, as Python's 'utf-8' codec does (it is removed later).
const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function decodeUtf8OrNull(bytes: Uint8Array): string | null {
  try {
    return strictUtf8.decode(bytes);
  } catch {
    return null;
  }
}

/** Characters whose Latin-1 / Windows-1252 byte is a UTF-8 continuation byte (0x80..0xBF). */
const CONT_CLASS = '\\u0080-\\u00bf' + CP1252_HIGH.map((c) => '\\u' + c.toString(16).padStart(4, '0')).join('');

/** A UTF-8 multi-byte sequence that was decoded as Latin-1 / Windows-1252 ("cafÃ©" for "café"). */
const MOJIBAKE_SEQ_RE = new RegExp(
  `[\\u00c2-\\u00df][${CONT_CLASS}]|[\\u00e0-\\u00ef][${CONT_CLASS}]{2}|[\\u00f0-\\u00f4][${CONT_CLASS}]{3}`,
  'g',
);

const C1_RE = /[\u0080-\u009f]/;

/** Lead characters whose two-character mojibake (Ã©, Â°, Î±, Ð°) is far more likely than real text. */
const STRONG_LEADS = new Set(['\u00c2', '\u00c3', '\u00ce', '\u00d0']);
/** Continuation characters that almost only occur in mojibake: C1 controls and rare symbols. */
const BAD_CONT_RE = /[\u0080-\u009f\u00a4\u00a6\u00a8\u00aa\u00ac\u00af\u00b8\u00ba\u0192\u02c6\u02dc\u2020\u2021\u2030]/;

/** Decodes one candidate sequence, or null when it is not valid UTF-8 after all. */
function decodeMojibakeSeq(seq: string): string | null {
  const bytes = new Uint8Array(seq.length);
  for (let i = 0; i < seq.length; i++) bytes[i] = SLOPPY_1252_ENCODE.get(seq.charCodeAt(i)) ?? 0;
  return decodeUtf8OrNull(bytes);
}

/**
 * Whether a candidate sequence really looks like mojibake. ftfy decides this with a large
 * "badness" regex; this is a smaller approximation of it: 3/4-byte sequences ("â€™", "ðŸ˜€") and
 * those led by Â/Ã/Î/Ð are suspicious; other accented letters only when followed by a C1 control
 * or a rarely used symbol, so “CAFÉ”, NESTLÉ® or È™ stay as written.
 */
function isSuspicious(seq: string): boolean {
  return seq.length >= 3 || STRONG_LEADS.has(seq[0]) || BAD_CONT_RE.test(seq[1]);
}

function forEachBadSeq(text: string, fn: (seq: string, index: number) => void): void {
  for (const m of text.matchAll(MOJIBAKE_SEQ_RE)) {
    if (isSuspicious(m[0]) && decodeMojibakeSeq(m[0]) !== null) fn(m[0], m.index!);
  }
}

/** "voilÃ  tout": the no-break space of "à" (C3 A0) turned into a plain space. */
const LOST_A0_RE = /(?:^|[a-z]\s?)[\u00c2\u00c3] /;

function looksBad(text: string): boolean {
  if (C1_RE.test(text) || LOST_A0_RE.test(text)) return true;
  let bad = false;
  forEachBadSeq(text, () => {
    bad = true;
  });
  return bad;
}

/** Byte patterns of UTF-8 sequences whose 0xA0 byte became 0x20 (ftfy's restore_byte_a0). */
const ALTERED_UTF8_RE = new RegExp(
  [
    '[\\xc2\\xc3\\xc5\\xce\\xd0\\xd9] ',
    '[\\xe2\\xe3] [\\x80-\\x84\\x86-\\x9f\\xa1-\\xbf]',
    '[\\xe0-\\xe3][\\x80-\\x84\\x86-\\x9f\\xa1-\\xbf] ',
    '\\xf0 [\\x80-\\xbf]{2}',
    '\\xf0[\\x80-\\xbf] [\\x80-\\xbf]',
    '\\xf0[\\x80-\\xbf]{2} ',
  ].join('|'),
  'g',
);

function restoreByteA0(bytes: Uint8Array): Uint8Array {
  // Work on a byte-per-character string so the byte pattern can be a RegExp.
  let asText = '';
  for (const b of bytes) asText += String.fromCharCode(b);
  const fixed = asText.replace(ALTERED_UTF8_RE, (m) => m.replace(/ /g, '\xa0'));
  if (fixed === asText) return bytes;
  return Uint8Array.from(fixed, (c) => c.charCodeAt(0));
}

function fixC1Controls(text: string): string {
  return text.replace(/[\u0080-\u009f]/g, (c) => String.fromCharCode(CP1252_HIGH[c.charCodeAt(0) - 0x80]));
}

/** One round of ftfy's `fix_encoding` for the UTF-8-read-as-Latin-1/Windows-1252 family. */
function fixEncodingOnce(text: string): string {
  if (!/[^\x00-\x7f]/.test(text) || !looksBad(text)) return text;
  // Whole text: re-encode with the single-byte codec and decode as UTF-8 (ftfy's first plan).
  for (const bytes of [encodeLatin1(text), encodeSloppy1252(text)]) {
    if (!bytes) continue;
    const fixed = decodeUtf8OrNull(restoreByteA0(bytes));
    if (fixed !== null) return fixed;
  }
  // Mojibake mixed with genuine non-Latin-1 text: fix each suspicious sequence on its own.
  let out = '';
  let last = 0;
  forEachBadSeq(text, (seq, index) => {
    if (seq.length >= text.length) return;
    out += text.slice(last, index) + decodeMojibakeSeq(seq)!;
    last = index + seq.length;
  });
  if (last > 0) return out + text.slice(last);
  // Stray C1 controls were almost certainly meant as Windows-1252 punctuation.
  if (C1_RE.test(text)) return fixC1Controls(text);
  return text;
}

function fixEncoding(text: string): string {
  for (;;) {
    const next = fixEncodingOnce(text);
    if (next === text) return text;
    text = next;
  }
}

/**
 * HTML entities ftfy decodes: the HTML 4 named set plus &apos;, and the all-caps spellings ftfy
 * accepts for lowercase names ("&EACUTE;" -> "É"). Format: `name=hex[.hex]`, space separated.
 * The rest of the HTML5 table (2000+ rarely typed names) is left undecoded.
 */
const ENTITY_DATA =
  'AACUTE=c1 ACIRC=c2 ACUTE=b4 AELIG=c6 AElig=c6 AGRAVE=c0 ALEFSYM=2135 ALPHA=391 AMP=26 AND=2227 ANG=2220 ' +
  'APOS=27 ARING=c5 ASYMP=2248 ATILDE=c3 AUML=c4 Aacute=c1 Acirc=c2 Agrave=c0 Alpha=391 Aring=c5 Atilde=c3 ' +
  'Auml=c4 BDQUO=201e BETA=392 BRVBAR=a6 BULL=2022 Beta=392 CAP=2229 CCEDIL=c7 CEDIL=b8 CENT=a2 CHI=3a7 CIRC=2c6 ' +
  'CLUBS=2663 CONG=2245 COPY=a9 CRARR=21b5 CUP=222a CURREN=a4 Ccedil=c7 Chi=3a7 DAGGER=2020 DARR=2193 DEG=b0 ' +
  'DELTA=394 DIAMS=2666 DIVIDE=f7 Dagger=2021 Delta=394 EACUTE=c9 ECIRC=ca EGRAVE=c8 EMPTY=2205 EMSP=2003 ' +
  'ENSP=2002 EPSILON=395 EQUIV=2261 ETA=397 ETH=d0 EUML=cb EURO=20ac EXIST=2203 Eacute=c9 Ecirc=ca Egrave=c8 ' +
  'Epsilon=395 Eta=397 Euml=cb FNOF=191 FORALL=2200 FRAC12=bd FRAC14=bc FRAC34=be FRASL=2044 GAMMA=393 GE=2265 ' +
  'GT=3e Gamma=393 HARR=2194 HEARTS=2665 HELLIP=2026 IACUTE=cd ICIRC=ce IEXCL=a1 IGRAVE=cc IMAGE=2111 INFIN=221e ' +
  'INT=222b IOTA=399 IQUEST=bf ISIN=2208 IUML=cf Iacute=cd Icirc=ce Igrave=cc Iota=399 Iuml=cf KAPPA=39a ' +
  'Kappa=39a LAMBDA=39b LANG=27e8 LAQUO=ab LARR=2190 LCEIL=2308 LDQUO=201c LE=2264 LFLOOR=230a LOWAST=2217 ' +
  'LOZ=25ca LRM=200e LSAQUO=2039 LSQUO=2018 LT=3c Lambda=39b MACR=af MDASH=2014 MICRO=39c MIDDOT=b7 MINUS=2212 ' +
  'MU=39c Mu=39c NABLA=2207 NBSP=a0 NDASH=2013 NE=2260 NI=220b NOT=ac NOTIN=2209 NSUB=2284 NTILDE=d1 NU=39d ' +
  'Ntilde=d1 Nu=39d OACUTE=d3 OCIRC=d4 OELIG=152 OElig=152 OGRAVE=d2 OLINE=203e OMEGA=3a9 OMICRON=39f OPLUS=2295 ' +
  'OR=2228 ORDF=aa ORDM=ba OSLASH=d8 OTILDE=d5 OTIMES=2297 OUML=d6 Oacute=d3 Ocirc=d4 Ograve=d2 Omega=3a9 ' +
  'Omicron=39f Oslash=d8 Otilde=d5 Ouml=d6 PARA=b6 PART=2202 PERMIL=2030 PERP=22a5 PHI=3a6 PI=3a0 PIV=3a0 ' +
  'PLUSMN=b1 POUND=a3 PRIME=2032 PROD=220f PROP=221d PSI=3a8 Phi=3a6 Pi=3a0 Prime=2033 Psi=3a8 QUOT=22 RADIC=221a ' +
  'RANG=27e9 RAQUO=bb RARR=2192 RCEIL=2309 RDQUO=201d REAL=211c REG=ae RFLOOR=230b RHO=3a1 RLM=200f RSAQUO=203a ' +
  'RSQUO=2019 Rho=3a1 SBQUO=201a SCARON=160 SDOT=22c5 SECT=a7 SHY=ad SIGMA=3a3 SIGMAF=3a3 SIM=223c SPADES=2660 ' +
  'SUB=2282 SUBE=2286 SUM=2211 SUP=2283 SUP1=b9 SUP2=b2 SUP3=b3 SUPE=2287 SZLIG=53.53 Scaron=160 Sigma=3a3 ' +
  'TAU=3a4 THERE4=2234 THETA=398 THETASYM=398 THINSP=2009 THORN=de TILDE=2dc TIMES=d7 TRADE=2122 Tau=3a4 ' +
  'Theta=398 UACUTE=da UARR=2191 UCIRC=db UGRAVE=d9 UML=a8 UPSIH=3d2 UPSILON=3a5 UUML=dc Uacute=da Ucirc=db ' +
  'Ugrave=d9 Upsilon=3a5 Uuml=dc WEIERP=2118 XI=39e Xi=39e YACUTE=dd YEN=a5 YUML=178 Yacute=dd Yuml=178 ZETA=396 ' +
  'ZWJ=200d ZWNJ=200c Zeta=396 aacute=e1 acirc=e2 acute=b4 aelig=e6 agrave=e0 alefsym=2135 alpha=3b1 amp=26 ' +
  'and=2227 ang=2220 apos=27 aring=e5 asymp=2248 atilde=e3 auml=e4 bdquo=201e beta=3b2 brvbar=a6 bull=2022 ' +
  'cap=2229 ccedil=e7 cedil=b8 cent=a2 chi=3c7 circ=2c6 clubs=2663 cong=2245 copy=a9 crarr=21b5 cup=222a ' +
  'curren=a4 dArr=21d3 dagger=2020 darr=2193 deg=b0 delta=3b4 diams=2666 divide=f7 eacute=e9 ecirc=ea egrave=e8 ' +
  'empty=2205 emsp=2003 ensp=2002 epsilon=3b5 equiv=2261 eta=3b7 eth=f0 euml=eb euro=20ac exist=2203 fnof=192 ' +
  'forall=2200 frac12=bd frac14=bc frac34=be frasl=2044 gamma=3b3 ge=2265 gt=3e hArr=21d4 harr=2194 hearts=2665 ' +
  'hellip=2026 iacute=ed icirc=ee iexcl=a1 igrave=ec image=2111 infin=221e int=222b iota=3b9 iquest=bf isin=2208 ' +
  'iuml=ef kappa=3ba lArr=21d0 lambda=3bb lang=27e8 laquo=ab larr=2190 lceil=2308 ldquo=201c le=2264 lfloor=230a ' +
  'lowast=2217 loz=25ca lrm=200e lsaquo=2039 lsquo=2018 lt=3c macr=af mdash=2014 micro=b5 middot=b7 minus=2212 ' +
  'mu=3bc nabla=2207 nbsp=a0 ndash=2013 ne=2260 ni=220b not=ac notin=2209 nsub=2284 ntilde=f1 nu=3bd oacute=f3 ' +
  'ocirc=f4 oelig=153 ograve=f2 oline=203e omega=3c9 omicron=3bf oplus=2295 or=2228 ordf=aa ordm=ba oslash=f8 ' +
  'otilde=f5 otimes=2297 ouml=f6 para=b6 part=2202 permil=2030 perp=22a5 phi=3c6 pi=3c0 piv=3d6 plusmn=b1 ' +
  'pound=a3 prime=2032 prod=220f prop=221d psi=3c8 quot=22 rArr=21d2 radic=221a rang=27e9 raquo=bb rarr=2192 ' +
  'rceil=2309 rdquo=201d real=211c reg=ae rfloor=230b rho=3c1 rlm=200f rsaquo=203a rsquo=2019 sbquo=201a ' +
  'scaron=161 sdot=22c5 sect=a7 shy=ad sigma=3c3 sigmaf=3c2 sim=223c spades=2660 sub=2282 sube=2286 sum=2211 ' +
  'sup=2283 sup1=b9 sup2=b2 sup3=b3 supe=2287 szlig=df tau=3c4 there4=2234 theta=3b8 thetasym=3d1 thinsp=2009 ' +
  'thorn=fe tilde=2dc times=d7 trade=2122 uArr=21d1 uacute=fa uarr=2191 ucirc=fb ugrave=f9 uml=a8 upsih=3d2 ' +
  'upsilon=3c5 uuml=fc weierp=2118 xi=3be yacute=fd yen=a5 yuml=ff zeta=3b6 zwj=200d zwnj=200c ';

let entityMap: Map<string, string> | null = null;
function entities(): Map<string, string> {
  if (!entityMap) {
    entityMap = new Map();
    for (const item of ENTITY_DATA.split(' ')) {
      if (!item) continue;
      const [name, hex] = item.split('=');
      entityMap.set(name, String.fromCodePoint(...hex.split('.').map((h) => parseInt(h, 16))));
    }
  }
  return entityMap;
}

/** Python's html.unescape rules for one numeric reference body ("#233" / "#xE9"), or null. */
function numericCharRef(body: string): string | null {
  let num: number;
  if (/^#[0-9]+$/.test(body)) num = parseInt(body.slice(1), 10);
  else if (/^#[xX][0-9a-fA-F]+$/.test(body)) num = parseInt(body.slice(2), 16);
  else return null; // html.unescape would leave part of it (and the ';') in place
  if (num === 0) return '\ufffd';
  if (num === 0x0d) return '\r';
  if (num >= 0x80 && num <= 0x9f) return String.fromCharCode(CP1252_HIGH[num - 0x80]);
  if ((num >= 0xd800 && num <= 0xdfff) || num > 0x10ffff) return '\ufffd';
  if (
    (num >= 0x1 && num <= 0x8) ||
    num === 0xb ||
    (num >= 0xe && num <= 0x1f) ||
    num === 0x7f ||
    (num >= 0xfdd0 && num <= 0xfdef) ||
    (num & 0xfffe) === 0xfffe
  ) {
    return '';
  }
  return String.fromCodePoint(num);
}

function unescapeHtml(text: string): string {
  return text.replace(/&#?[0-9A-Za-z]{1,24};/g, (m) => {
    const named = entities().get(m.slice(1, -1));
    if (named !== undefined) return named;
    if (m.startsWith('&#')) {
      const ch = numericCharRef(m.slice(1, -1));
      // ftfy keeps the reference when the decoded text still contains a ';'.
      if (ch !== null && !ch.includes(';')) return ch;
    }
    return m;
  });
}

const LIGATURES: Record<string, string> = {
  '\u0132': 'IJ',
  '\u0133': 'ij',
  '\u0149': '\u02bcn',
  '\u01f1': 'DZ',
  '\u01f2': 'Dz',
  '\u01f3': 'dz',
  '\u01c4': 'D\u017d',
  '\u01c5': 'D\u017e',
  '\u01c6': 'd\u017e',
  '\u01c7': 'LJ',
  '\u01c8': 'Lj',
  '\u01c9': 'lj',
  '\u01ca': 'NJ',
  '\u01cb': 'Nj',
  '\u01cc': 'nj',
  '\ufb00': 'ff',
  '\ufb01': 'fi',
  '\ufb02': 'fl',
  '\ufb03': 'ffi',
  '\ufb04': 'ffl',
  '\ufb05': '\u017ft',
  '\ufb06': 'st',
};
const LIGATURE_RE = new RegExp(`[${Object.keys(LIGATURES).join('')}]`, 'g');

function fixLatinLigatures(text: string): string {
  return text.replace(LIGATURE_RE, (c) => LIGATURES[c]);
}

/** Full-width / half-width forms -> their NFKC equivalents; ideographic space -> space. */
function fixCharacterWidth(text: string): string {
  return text.replace(/[\u3000\uff01-\uffef]/g, (c) => (c === '\u3000' ? ' ' : c.normalize('NFKC')));
}

function uncurlQuotes(text: string): string {
  return text.replace(/[\u02bc\u2018-\u201b]/g, "'").replace(/[\u201c-\u201f]/g, '"');
}

function fixLineBreaks(text: string): string {
  return text.replace(/\r\n/g, '\n').replace(/[\r\u2028\u2029\u0085]/g, '\n');
}

/** JS strings are UTF-16, so only unpaired surrogates need fixing (ftfy also joins pairs). */
function fixSurrogates(text: string): string {
  return text.replace(/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, '\ufffd');
}

function removeTerminalEscapes(text: string): string {
  return text.replace(/\x1b\[(?:\p{Nd}|;)*[a-zA-Z]/gu, '');
}

/** ASCII controls except whitespace ones, deprecated Arabic format chars, BOM, annotation chars. */
function removeControlChars(text: string): string {
  return text.replace(/[\x00-\x08\x0b\x0e-\x1f\x7f\u206a-\u206f\ufeff\ufff9-\ufffc]/g, '');
}

function fixSegment(text: string, unescape: boolean): string {
  // ftfy repeats the whole pipeline until it stops changing anything ("&amp;lt;" -> "<").
  for (;;) {
    const prev = text;
    if (unescape) text = unescapeHtml(text);
    text = fixEncoding(text);
    text = fixC1Controls(text);
    text = fixLatinLigatures(text);
    text = fixCharacterWidth(text);
    text = uncurlQuotes(text);
    text = fixLineBreaks(text);
    text = fixSurrogates(text);
    text = removeTerminalEscapes(text);
    text = removeControlChars(text);
    text = text.normalize('NFC');
    if (text === prev) return text;
  }
}

/**
 * ftfy 6.1.1 `fix_text` with its default configuration, restricted to what this module implements:
 * HTML entity unescaping (skipped once a line contains '<', as ftfy's "auto" mode does), UTF-8 /
 * Latin-1 / Windows-1252 mojibake repair, C1 controls, Latin ligatures, character width, curly
 * quotes, line breaks, surrogates, terminal escapes, control characters and NFC.
 * Not implemented: mojibake through other code pages (1250/1251/1253/1254, MacRoman, cp437),
 * `replace_lossy_sequences`, and the full HTML5 entity table.
 */
export function ftfyFixText(text: string): string {
  const out: string[] = [];
  let unescape = true;
  let pos = 0;
  while (pos < text.length) {
    // ftfy fixes line by line (each line keeps its '\n').
    let end = text.indexOf('\n', pos) + 1;
    if (end === 0) end = text.length;
    if (end - pos > 1_000_000) end = pos + 1_000_000;
    const segment = text.slice(pos, end);
    if (unescape && segment.includes('<')) unescape = false; // stays off for the remaining lines
    out.push(fixSegment(segment, unescape));
    pos = end;
  }
  return out.join('');
}

/** Python's str.isspace() set, which `re`'s \s and str.strip() use (JS \s differs slightly). */
const PY_SPACE = '\\t-\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';
const PY_SPACE_RUN_RE = new RegExp(`[${PY_SPACE}]+`, 'g');
const PY_LEADING_SPACE_RE = new RegExp(`^[${PY_SPACE}]+`);
const PY_TRAILING_SPACE_RE = new RegExp(`[${PY_SPACE}]+$`);

function pyStrip(text: string, side: 'left' | 'right' | 'both' = 'both'): string {
  if (side !== 'right') text = text.replace(PY_LEADING_SPACE_RE, '');
  if (side !== 'left') text = text.replace(PY_TRAILING_SPACE_RE, '');
  return text;
}

/** `whitespace_clean(ftfy.fix_text(text)).lower()`, the clean-up of the CLIP tokenizers. */
export function clipCleanText(text: string): string {
  return pyStrip(ftfyFixText(text).replace(PY_SPACE_RUN_RE, ' ')).toLowerCase();
}

// ---------------------------------------------------------------------------------------------
// Byte-level BPE.
// ---------------------------------------------------------------------------------------------

const BOS_TOKEN = '<|startoftext|>';
const EOS_TOKEN = '<|endoftext|>';
const SPECIAL_SPLIT_RE = /(<\|startoftext\|>|<\|endoftext\|>)/;

/** CLIP pre-tokenizer: special tokens, English contractions, letter runs, single digits, symbol runs. */
const CLIP_PAT =
  /<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+/giu;

/** GPT-2/CLIP reversible byte -> printable character table (no whitespace/control characters). */
function bytesToUnicode(): string[] {
  const table: string[] = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    table[b] = String.fromCharCode(printable ? b : 256 + extra++);
  }
  return table;
}

const BYTE_TO_UNICODE = bytesToUnicode();
const utf8Encoder = new TextEncoder();

/** Number of merges CLIP uses: vocab 49408 = 256 bytes + 256 '</w>' bytes + merges + 2 specials. */
const CLIP_NUM_MERGES = 49152 - 256 - 2;

export interface ClipTokenizerOptions {
  /** 'eos' (SD1, default), 'zero' (id 0, i.e. '!', SD2) or any vocabulary token. */
  padToken?: 'eos' | 'zero' | string;
  /** Context length; 77 for every SD text encoder. */
  maxLength?: number;
}

export interface ClipEncodeOptions {
  /** 'max_length' (default) pads to maxLength; 'none' returns just BOS + tokens + EOS. */
  padding?: 'max_length' | 'none';
  /** Keep BOS + the first maxLength-2 tokens + EOS (default true). */
  truncation?: boolean;
  /** Overrides the tokenizer's pad token: 'sd1' pads with EOS, 'sd2' with id 0. */
  pad?: 'sd1' | 'sd2';
}

export class ClipTokenizer {
  readonly bosId: number;
  readonly eosId: number;
  readonly padId: number;
  readonly maxLength: number;
  private readonly encoder: Map<string, number>;
  private readonly decoder: Map<number, string>;
  private readonly ranks: Map<string, number>;
  private readonly cache = new Map<string, string[]>();

  private constructor(
    encoder: Map<string, number>,
    ranks: Map<string, number>,
    padToken: string,
    maxLength: number,
  ) {
    this.encoder = encoder;
    this.decoder = new Map([...encoder].map(([k, v]) => [v, k]));
    this.ranks = ranks;
    this.maxLength = maxLength;
    this.bosId = this.requireId(BOS_TOKEN);
    this.eosId = this.requireId(EOS_TOKEN);
    this.padId = padToken === 'eos' ? this.eosId : padToken === 'zero' ? 0 : this.requireId(padToken);
    // Special tokens matched by the pre-tokenizer bypass BPE.
    this.cache.set(BOS_TOKEN, [BOS_TOKEN]);
    this.cache.set(EOS_TOKEN, [EOS_TOKEN]);
  }

  static fromFiles(
    vocabJson: Record<string, number>,
    mergesText: string,
    opts: ClipTokenizerOptions = {},
  ): ClipTokenizer {
    const encoder = new Map(Object.entries(vocabJson));
    // Like transformers: drop the '#version' header and keep exactly CLIP's merge count.
    const lines = mergesText.trim().split('\n').slice(1, CLIP_NUM_MERGES + 1);
    const ranks = new Map<string, number>();
    lines.forEach((line, rank) => {
      const [a, b] = line.trim().split(/\s+/);
      if (a !== undefined && b !== undefined) ranks.set(`${a} ${b}`, rank);
    });
    return new ClipTokenizer(encoder, ranks, opts.padToken ?? 'eos', opts.maxLength ?? 77);
  }

  get vocabSize(): number {
    return this.encoder.size;
  }

  private requireId(token: string): number {
    const id = this.encoder.get(token);
    if (id === undefined) throw new Error(`tokenizer: token ${JSON.stringify(token)} is not in the vocabulary`);
    return id;
  }

  /** BPE token strings (byte-level characters, '</w>' marks a word end), without BOS/EOS. */
  tokenize(text: string): string[] {
    // Special tokens typed verbatim are split out before any clean-up, as transformers does;
    // the neighbouring text loses its whitespace on that side.
    const parts = text.split(SPECIAL_SPLIT_RE);
    const out: string[] = [];
    for (let i = 0; i < parts.length; i++) {
      if (i % 2 === 1) {
        out.push(parts[i]);
        continue;
      }
      let chunk = parts[i];
      if (i > 0) chunk = pyStrip(chunk, 'left');
      if (i < parts.length - 1) chunk = pyStrip(chunk, 'right');
      if (chunk) this.tokenizeChunk(chunk, out);
    }
    return out;
  }

  private tokenizeChunk(chunk: string, out: string[]): void {
    for (const m of clipCleanText(chunk).matchAll(CLIP_PAT)) {
      let word = '';
      for (const b of utf8Encoder.encode(m[0])) word += BYTE_TO_UNICODE[b];
      for (const piece of this.bpe(word)) out.push(piece);
    }
  }

  /** Merges the characters of one pre-token, lowest merge rank first, until no merge applies. */
  private bpe(token: string): string[] {
    const cached = this.cache.get(token);
    if (cached) return cached;
    let word = Array.from(token);
    word[word.length - 1] += '</w>';
    while (word.length > 1) {
      let best = -1;
      let bestRank = Infinity;
      for (let i = 0; i < word.length - 1; i++) {
        const r = this.ranks.get(`${word[i]} ${word[i + 1]}`);
        if (r !== undefined && r < bestRank) {
          bestRank = r;
          best = i;
        }
      }
      if (best < 0) break;
      const first = word[best];
      const second = word[best + 1];
      // Merge every non-overlapping occurrence of the pair, left to right.
      const merged: string[] = [];
      for (let i = 0; i < word.length; ) {
        if (i < word.length - 1 && word[i] === first && word[i + 1] === second) {
          merged.push(first + second);
          i += 2;
        } else {
          merged.push(word[i]);
          i += 1;
        }
      }
      word = merged;
    }
    this.cache.set(token, word);
    return word;
  }

  /** Token ids: BOS + ids + EOS, truncated and padded per the options (SD defaults). */
  encode(text: string, opts: ClipEncodeOptions = {}): number[] {
    const padding = opts.padding ?? 'max_length';
    const truncation = opts.truncation ?? true;
    const padId = opts.pad === 'sd1' ? this.eosId : opts.pad === 'sd2' ? 0 : this.padId;
    let ids = this.tokenize(text).map((t) => this.encoder.get(t) ?? this.eosId); // unk is EOS in CLIP
    if (truncation && ids.length > this.maxLength - 2) ids = ids.slice(0, this.maxLength - 2);
    const out = [this.bosId, ...ids, this.eosId];
    if (padding === 'max_length') while (out.length < this.maxLength) out.push(padId);
    return out;
  }

  /** Readable text for ids (debugging aid): byte-level tokens back to UTF-8, '</w>' to spaces. */
  decode(ids: number[]): string {
    const unicodeToByte = new Map(BYTE_TO_UNICODE.map((c, b) => [c, b]));
    const bytes: number[] = [];
    for (const id of ids) {
      const tok = this.decoder.get(id) ?? '';
      for (const c of tok.replace(/<\/w>/g, ' ')) {
        const b = unicodeToByte.get(c);
        if (b !== undefined) bytes.push(b);
        else bytes.push(...utf8Encoder.encode(c));
      }
    }
    return new TextDecoder().decode(new Uint8Array(bytes)).trim();
  }
}
