// Recognising a checkpoint's naming layout, and reading an original-layout checkpoint under
// diffusers/transformers names through a KeyMap (browser-safe).
import { WeightsError } from './errors.js';
import type { ConfigObject } from './config-reader.js';
import { decodeF16Bits, decodeF32, decodeI64, type TensorInfo, type TensorReader } from './safetensors.js';
import { DTYPE_BYTES } from './dtype.js';
import { paramSpec, type ParamSpec } from './param-spec.js';
import {
  ldmUnetKeyMap, ldmVaeKeyMap, ldmClipTextKeyMap, openClipTextKeyMap, targetShape, transformBytes,
  type KeyMap, type KeySource,
} from './keymap.js';

export type CheckpointLayout =
  | 'ldm-sd1' | 'ldm-sd2' | 'ldm-unknown'
  | 'openclip' | 'diffusers-unet' | 'diffusers-vae'
  | 'hf-clip-text' | 'hf-clip-vision' | 'hf-clip' | 'plain';

export const LAYOUT_DESCRIPTIONS: Record<CheckpointLayout, string> = {
  'ldm-sd1': 'LDM single-file Stable Diffusion 1.x checkpoint (CLIP ViT-L text encoder)',
  'ldm-sd2': 'LDM single-file Stable Diffusion 2.x checkpoint (OpenCLIP ViT-H text encoder)',
  'ldm-unknown': 'LDM single-file checkpoint (text encoder not recognised)',
  openclip: 'OpenCLIP checkpoint',
  'diffusers-unet': 'diffusers UNet2DConditionModel weights',
  'diffusers-vae': 'diffusers AutoencoderKL weights',
  'hf-clip-text': 'transformers CLIP text model weights',
  'hf-clip-vision': 'transformers CLIP vision model weights',
  'hf-clip': 'transformers CLIPModel weights',
  plain: 'plain safetensors (layout not recognised)',
};

export function detectLayout(names: Iterable<string>): CheckpointLayout {
  const all = [...names];
  const any = (re: RegExp) => all.some((n) => re.test(n));
  if (any(/^model\.diffusion_model\./)) {
    if (any(/^cond_stage_model\.model\.transformer\.resblocks\./)) return 'ldm-sd2';
    if (any(/^cond_stage_model\.transformer\./)) return 'ldm-sd1';
    return 'ldm-unknown';
  }
  if (any(/^(visual\.)?transformer\.resblocks\./) || any(/^visual\.conv1\./)) return 'openclip';
  const text = any(/^text_model\./);
  const vision = any(/^vision_model\./);
  if (text && vision) return 'hf-clip';
  if (text) return 'hf-clip-text';
  if (vision) return 'hf-clip-vision';
  if (any(/^time_embedding\.linear_1\./) && any(/^conv_in\./)) return 'diffusers-unet';
  if (any(/^encoder\.conv_in\./) && any(/^decoder\.conv_in\./)) return 'diffusers-vae';
  return 'plain';
}

export interface LdmConfigs {
  unet: ConfigObject;
  vae: ConfigObject;
  text: ConfigObject;
}

/** Key maps for the three parts of an LDM single-file checkpoint whose tensor names are `names`. */
export function ldmKeyMaps(layout: 'ldm-sd1' | 'ldm-sd2', configs: LdmConfigs, names: Iterable<string>): { unet: KeyMap; vae: KeyMap; text: KeyMap } {
  const list = [...names];
  const textLevel = list.some((n) => n.startsWith('cond_stage_model.transformer.text_model.'));
  return {
    unet: ldmUnetKeyMap(configs.unet),
    vae: ldmVaeKeyMap(configs.vae),
    text: layout === 'ldm-sd1' ? ldmClipTextKeyMap(configs.text, 'cond_stage_model.transformer.', textLevel) : openClipTextKeyMap(configs.text),
  };
}

/**
 * A TensorReader that presents `source` under target names. Checks on construction that every
 * non-optional target's source exists with a shape the transform turns into the spec's shape.
 */
export class KeyMappedReader implements TensorReader {
  readonly tensors = new Map<string, TensorInfo>();
  private readonly how = new Map<string, KeySource & { srcShape: number[] }>();

  constructor(readonly source: TensorReader, map: KeyMap, spec: readonly ParamSpec[], readonly name = source.name) {
    const specShape = new Map(spec.map((p) => [p.name, p.shape]));
    for (const [target, ks] of map) {
      const src = source.tensors.get(ks.source);
      if (!src) {
        if (ks.optional) continue;
        throw new WeightsError('MISSING_TENSOR', `source tensor "${ks.source}" is absent`, { file: source.name, tensor: target, expected: ks.source, found: 'absent' });
      }
      const shape = targetShape(src.shape, ks.transform, { file: source.name, tensor: ks.source });
      const want = specShape.get(target);
      if (want && want.join() !== shape.join()) {
        throw new WeightsError('SHAPE_MISMATCH', `source "${ks.source}" (${ks.transform}) has the wrong shape`, {
          file: source.name, tensor: target, expected: `[${want.join(', ')}]`, found: `[${shape.join(', ')}]`,
        });
      }
      const byteLength = shape.reduce((a, d) => a * d, DTYPE_BYTES[src.dtype]);
      const part = ks.transform === 'split_k' ? 1 : ks.transform === 'split_v' ? 2 : 0;
      this.tensors.set(target, { name: target, dtype: src.dtype, shape, byteOffset: src.byteOffset + part * byteLength, byteLength });
      this.how.set(target, { ...ks, srcShape: src.shape });
    }
  }

  get metadata(): Record<string, string> {
    return this.source.metadata;
  }

  private info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (!t) throw new WeightsError('MISSING_TENSOR', 'no such tensor under the key map', { file: this.name, tensor: name });
    return t;
  }

  async readBytes(name: string): Promise<Uint8Array> {
    const t = this.info(name);
    const h = this.how.get(name)!;
    return transformBytes(h.transform, h.srcShape, await this.source.readBytes(h.source), DTYPE_BYTES[t.dtype]);
  }
  async readF32(name: string): Promise<Float32Array> {
    return decodeF32(this.info(name), await this.readBytes(name), this.name);
  }
  async readI64(name: string): Promise<BigInt64Array> {
    return decodeI64(this.info(name), await this.readBytes(name), this.name);
  }
  async readAsF16Bits(name: string): Promise<Uint16Array> {
    return decodeF16Bits(this.info(name), await this.readBytes(name), this.name);
  }
  close(): Promise<void> {
    return this.source.close();
  }
}

/** Convenience: view an LDM single-file checkpoint's part as a diffusers/transformers model. */
export function ldmPartReader(
  source: TensorReader, layout: 'ldm-sd1' | 'ldm-sd2', configs: LdmConfigs, part: 'unet' | 'vae' | 'text',
): KeyMappedReader {
  const maps = ldmKeyMaps(layout, configs, source.tensors.keys());
  const cls = part === 'unet' ? 'UNet2DConditionModel' : part === 'vae' ? 'AutoencoderKL' : 'CLIPTextModel';
  return new KeyMappedReader(source, maps[part], paramSpec(configs[part], { className: cls }), `${source.name}#${part}`);
}
