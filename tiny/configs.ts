// Configs of the tiny-world models: the real diffusers / transformers classes (StableDiffusionPipeline with
// CLIPTextModel, AutoencoderKL, UNet2DConditionModel, DDIMScheduler, plus CLIPVisionModelWithProjection as
// the image tower SeedSelect scores with), sized so that all of them train on a CPU adapter in about an
// hour. Images are 32x32 RGB; the VAE maps them to 8x8x4 latents (two downsamplers).
import type { ConfigObject } from '../weights-tools/config-reader.js';

export const IMAGE_SIZE = 32;

export const TEXT_CONFIG: ConfigObject = {
  architectures: ['CLIPTextModel'],
  attention_dropout: 0.0,
  bos_token_id: 49406,
  eos_token_id: 49407,
  hidden_act: 'quick_gelu',
  hidden_size: 32,
  initializer_factor: 1.0,
  initializer_range: 0.02,
  intermediate_size: 64,
  layer_norm_eps: 1e-5,
  max_position_embeddings: 77,
  model_type: 'clip_text_model',
  num_attention_heads: 4,
  num_hidden_layers: 2,
  pad_token_id: 49407,
  projection_dim: 32,
  torch_dtype: 'float32',
  transformers_version: '4.30.0',
  vocab_size: 49408,
};

export const VISION_CONFIG: ConfigObject = {
  architectures: ['CLIPVisionModelWithProjection'],
  attention_dropout: 0.0,
  hidden_act: 'quick_gelu',
  hidden_size: 64,
  image_size: IMAGE_SIZE,
  initializer_factor: 1.0,
  initializer_range: 0.02,
  intermediate_size: 128,
  layer_norm_eps: 1e-5,
  model_type: 'clip_vision_model',
  num_attention_heads: 4,
  num_channels: 3,
  num_hidden_layers: 3,
  patch_size: 4,
  projection_dim: 32,
  torch_dtype: 'float32',
  transformers_version: '4.30.0',
};

export const CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073];
export const CLIP_STD = [0.26862954, 0.26130258, 0.27577711];

export const PREPROCESSOR_CONFIG = {
  crop_size: { height: IMAGE_SIZE, width: IMAGE_SIZE },
  do_center_crop: true,
  do_normalize: true,
  do_resize: true,
  image_mean: CLIP_MEAN,
  image_std: CLIP_STD,
  resample: 3,
  size: { shortest_edge: IMAGE_SIZE },
};

export const VAE_CONFIG: ConfigObject = {
  _class_name: 'AutoencoderKL',
  _diffusers_version: '0.25.1',
  act_fn: 'silu',
  block_out_channels: [16, 32, 64],
  down_block_types: ['DownEncoderBlock2D', 'DownEncoderBlock2D', 'DownEncoderBlock2D'],
  force_upcast: true,
  in_channels: 3,
  latent_channels: 4,
  layers_per_block: 1,
  norm_num_groups: 8,
  out_channels: 3,
  sample_size: IMAGE_SIZE,
  // replaced after training by 1 / std of the training latents, as for Stable Diffusion's 0.18215
  scaling_factor: 1.0,
  up_block_types: ['UpDecoderBlock2D', 'UpDecoderBlock2D', 'UpDecoderBlock2D'],
};

export const UNET_CONFIG: ConfigObject = {
  _class_name: 'UNet2DConditionModel',
  _diffusers_version: '0.25.1',
  act_fn: 'silu',
  addition_embed_type: null,
  addition_embed_type_num_heads: 64,
  addition_time_embed_dim: null,
  attention_head_dim: 4,
  attention_type: 'default',
  block_out_channels: [32, 64],
  center_input_sample: false,
  class_embed_type: null,
  class_embeddings_concat: false,
  conv_in_kernel: 3,
  conv_out_kernel: 3,
  cross_attention_dim: 32,
  cross_attention_norm: null,
  down_block_types: ['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D'],
  downsample_padding: 1,
  dropout: 0.0,
  dual_cross_attention: false,
  encoder_hid_dim: null,
  encoder_hid_dim_type: null,
  flip_sin_to_cos: true,
  freq_shift: 0,
  in_channels: 4,
  layers_per_block: 1,
  mid_block_only_cross_attention: null,
  mid_block_scale_factor: 1,
  mid_block_type: 'UNetMidBlock2DCrossAttn',
  norm_eps: 1e-5,
  norm_num_groups: 16,
  num_attention_heads: null,
  num_class_embeds: null,
  only_cross_attention: false,
  out_channels: 4,
  projection_class_embeddings_input_dim: null,
  resnet_out_scale_factor: 1.0,
  resnet_skip_time_act: false,
  resnet_time_scale_shift: 'default',
  reverse_transformer_layers_per_block: null,
  sample_size: IMAGE_SIZE / 4,
  time_cond_proj_dim: null,
  time_embedding_act_fn: null,
  time_embedding_dim: null,
  time_embedding_type: 'positional',
  timestep_post_act: null,
  transformer_layers_per_block: 1,
  up_block_types: ['CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'],
  upcast_attention: false,
  use_linear_projection: false,
};

export const SCHEDULER_CONFIG = {
  _class_name: 'DDIMScheduler',
  _diffusers_version: '0.25.1',
  beta_end: 0.012,
  beta_schedule: 'scaled_linear',
  beta_start: 0.00085,
  clip_sample: false,
  clip_sample_range: 1.0,
  dynamic_thresholding_ratio: 0.995,
  num_train_timesteps: 1000,
  prediction_type: 'epsilon',
  rescale_betas_zero_snr: false,
  sample_max_value: 1.0,
  set_alpha_to_one: false,
  steps_offset: 1,
  thresholding: false,
  timestep_spacing: 'leading',
  trained_betas: null,
};

export const MODEL_INDEX = {
  _class_name: 'StableDiffusionPipeline',
  _diffusers_version: '0.25.1',
  feature_extractor: [null, null],
  image_encoder: ['transformers', 'CLIPVisionModelWithProjection'],
  requires_safety_checker: false,
  safety_checker: [null, null],
  scheduler: ['diffusers', 'DDIMScheduler'],
  text_encoder: ['transformers', 'CLIPTextModel'],
  tokenizer: ['transformers', 'CLIPTokenizer'],
  unet: ['diffusers', 'UNet2DConditionModel'],
  vae: ['diffusers', 'AutoencoderKL'],
};

export const TOKENIZER_CONFIG = {
  bos_token: '<|startoftext|>',
  eos_token: '<|endoftext|>',
  pad_token: '<|endoftext|>',
  unk_token: '<|endoftext|>',
  model_max_length: 77,
  tokenizer_class: 'CLIPTokenizer',
};

/** The judge: a small convnet with two heads (colour, shape), trained on balanced renders. Not a diffusers class. */
export const JUDGE_CONFIG = {
  _class_name: 'TinyWorldJudge',
  image_size: IMAGE_SIZE,
  /** conv3x3 layers: [out channels, stride] */
  layers: [
    [16, 1],
    [32, 2],
    [64, 2],
    [64, 2],
  ] as [number, number][],
};
