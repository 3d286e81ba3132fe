import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ClipTokenizer, clipCleanText, ftfyFixText } from '../../models/tokenizer.js';

const dir = path.resolve('..', 'shared', 'golden', 'tokenizer');

interface Variant {
  tokens: string[];
  ids_full: number[];
  ids_sd1: number[];
  ids_sd2: number[];
}
interface Prompt {
  text: string;
  hf_slow_ftfy: Variant;
  openai: { ids_full: number[]; ids_77_pad0: number[] };
}

const vocab = JSON.parse(readFileSync(path.join(dir, 'vocab.json'), 'utf8')) as Record<string, number>;
const merges = readFileSync(path.join(dir, 'merges.txt'), 'utf8');
const golden = JSON.parse(readFileSync(path.join(dir, 'tokens.json'), 'utf8')) as { prompts: Prompt[] };

const sd1 = ClipTokenizer.fromFiles(vocab, merges);
const sd2 = ClipTokenizer.fromFiles(vocab, merges, { padToken: 'zero' });

describe('ClipTokenizer vs transformers slow CLIPTokenizer + ftfy', () => {
  it('has the CLIP vocabulary layout', () => {
    expect(sd1.vocabSize).toBe(49408);
    expect(sd1.bosId).toBe(49406);
    expect(sd1.eosId).toBe(49407);
    expect(sd1.padId).toBe(49407);
    expect(sd2.padId).toBe(0);
    expect(sd1.encode('a photo of a cat', { padding: 'none' })).toEqual([49406, 320, 1125, 539, 320, 2368, 49407]);
  });

  it('has golden prompts', () => expect(golden.prompts.length).toBeGreaterThan(0));
  for (const [i, p] of golden.prompts.entries()) {
    it(`prompt ${i}: ${JSON.stringify(p.text.slice(0, 40))}`, () => {
      const ref = p.hf_slow_ftfy;
      expect(sd1.tokenize(p.text)).toEqual(ref.tokens);
      expect(sd1.encode(p.text, { padding: 'none', truncation: false })).toEqual(ref.ids_full);
      expect(sd1.encode(p.text)).toEqual(ref.ids_sd1);
      expect(sd2.encode(p.text)).toEqual(ref.ids_sd2);
      // The per-call pad option overrides the constructor's pad token.
      expect(sd1.encode(p.text, { pad: 'sd2' })).toEqual(ref.ids_sd2);
      expect(sd2.encode(p.text, { pad: 'sd1' })).toEqual(ref.ids_sd1);
      // openai's clip.tokenize(truncate=True) agrees with the zero-padded variant.
      expect(sd2.encode(p.text)).toEqual(p.openai.ids_77_pad0);
    });
  }
});

describe('clipCleanText (ftfy fix_text + whitespace clean + lower)', () => {
  it('unescapes HTML entities unless the line contains "<"', () => {
    expect(clipCleanText('Tom &amp; Jerry &lt;3 &quot;q&quot; &#39;x&#x27; &EACUTE;')).toBe('tom & jerry <3 "q" \'x\' é');
    expect(ftfyFixText('&amp;lt;')).toBe('<'); // repeated until stable
    expect(ftfyFixText('a < b &amp; c')).toBe('a < b &amp; c');
    expect(ftfyFixText('&#59; &#12ab; &nosuch;')).toBe('&#59; &#12ab; &nosuch;');
    expect(ftfyFixText('&#150;&#0;')).toBe('\u2013\ufffd');
  });

  it('repairs UTF-8 read as Latin-1 / Windows-1252', () => {
    expect(ftfyFixText('cafÃ©')).toBe('café');
    expect(ftfyFixText('donâ€™t')).toBe("don't"); // then uncurled
    expect(ftfyFixText('cafÃƒÂ©')).toBe('café'); // doubly encoded
    expect(ftfyFixText('ðŸ˜€ ok')).toBe('😀 ok');
    expect(ftfyFixText('日本 cafÃ©')).toBe('日本 café'); // mixed with real non-Latin text
    expect(ftfyFixText('\x93quoted\x94')).toBe('"quoted"'); // C1 controls as Windows-1252
    expect(ftfyFixText('Ð¿Ñ€Ð¸Ð²ÐµÑ‚')).toBe('привет');
    expect(ftfyFixText('voilÃ  tout')).toBe('voilà tout'); // the A0 byte had become a space
  });

  it('leaves legitimate accented text alone', () => {
    for (const s of ['café crème brûlée, naïve résumé', 'ümlaut Ärger Straße', 'Ωmega Кириллица', 'NESTLÉ®', 'ß°']) {
      expect(ftfyFixText(s)).toBe(s);
    }
    expect(ftfyFixText('“CAFÉ”')).toBe('"CAFÉ"');
  });

  it('applies ligature, width, quote, control and whitespace fixes', () => {
    expect(clipCleanText('ﬁne ﬂower ﬃ')).toBe('fine flower ffi');
    expect(clipCleanText('ＡＢＣ１２３\u3000ｶﾀｶﾅ')).toBe('abc123 カタカナ');
    expect(clipCleanText('‘single’ “double” ʼx')).toBe('\'single\' "double" \'x');
    expect(clipCleanText('a\u200bb\xa0c\ufeffd\x1b[31me\x07')).toBe('a\u200bb cde');
    expect(clipCleanText('  A \t B\r\n\u2028C  ')).toBe('a b c');
    expect(clipCleanText('e\u0301')).toBe('é'); // NFC
  });
});
