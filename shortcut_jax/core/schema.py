"""The config schema: every field of an experiment's config and its default, written only here.

Experiment files in `configs/` start from `base_config()` (re-exported by `shortcut_jax.config`,
which also validates) and change what they need. Library code that is handed a section of a
config (an objective's or optimizer's settings) reads its fields through
`core.config_value.config_value`, which takes a field a hand-made section lacks from here: no
module writes a default of its own.
"""

import functools

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  """All fields with their defaults (the original's defaults where it has one)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # What a guidance scale w means (`shortcut_jax.core.guidance`): 'original' (the original's, for
  # every new config: w = 0 unconditional, w = 1 conditional with no unconditional pass, w > 1
  # guided, in training, in `evals.*.cfg_scale` and on eval.py's command line) or 'legacy' (a
  # workdir whose config.json predates this field: eval.py's scale 0 meant conditional without
  # guidance, and `--mode=fid` kept its own defaults; `experiment.load_config` sets it, with a notice).
  c.guidance_convention = "original"
  c.batch_size = 256  # Global batch size, summed over all devices and processes.
  c.max_steps = 100_000
  c.log_every = 100
  c.eval_every = 5_000  # Default period for the evaluators below that leave `every` at -1.
  # An evaluator that raises: 'continue' logs the error with the step and trains on (the step's
  # checkpoint is saved before evaluators run), 'stop' re-raises after the save.
  c.eval_errors = "continue"
  # Profile train steps N..M (inclusive; (N, M), 1-based) with jax.profiler into
  # workdir/profile (TensorBoard's profile tab, Perfetto); () = off. Process 0 only.
  c.profile_steps = ()
  # Weights & Biases, written next to TensorBoard by process 0 when the `wandb` package is
  # installed and `project` is set (None: off). `mode`: 'online' | 'offline' | 'disabled'.
  c.wandb = ml_collections.ConfigDict(dict(
      project=ml_collections.FieldReference(None, field_type=str),
      entity=ml_collections.FieldReference(None, field_type=str),
      name=ml_collections.FieldReference(None, field_type=str), mode="online"))

  c.model = ml_collections.ConfigDict(dict(
      name="dit",  # The network (shortcut_jax.models.registry).
      patch_size=2, hidden_size=768, depth=12, num_heads=12, mlp_ratio=4.0, dropout=0.0,
      # The numeric policy (`core.precision`): compute dtype 'float32' | 'bfloat16' (float16 is
      # refused: no loss scaling); parameters and outputs are always float32. Matmul precision
      # 'default' (JAX's: one bfloat16 pass on TPU, TF32 on recent GPUs) | 'high' | 'highest'.
      dtype="bfloat16", matmul_precision="default",
      attention_impl="xla",  # 'xla' | 'cudnn' | 'auto' | 'einsum' (the original's arithmetic).
      attention_scale="original",  # 'original' (1/head_dim) | 'sqrt' (1/sqrt(head_dim)).
      # Rematerialise the blocks in the backward pass: 'none' | 'full' | 'dots' (keep matmul
      # outputs). scan_layers: the blocks as one nn.scan over stacked parameters (one block to
      # compile; `core.layer_stack` converts checkpoints of the other layout when they load).
      remat="none", scan_layers=False,
      # How a conditioning image (super-resolution input) enters the DiT, when the data has
      # one: 'concat' (extra input channels) | 'tokens' (second patch embedding, fused tokens).
      cond_image_mode="concat",
      # What the network outputs: 'velocity' (the original) or 'data' (a prediction of x1,
      # turned into the velocity it implies on the objective's path; see models.registry).
      prediction="velocity",
      # Where a higher-order objective's acceleration comes from (objective 'homo'): 'network'
      # (a second DiT taking the velocity as input) | 'head' (a second output of one DiT).
      acceleration="network",
      # A vector condition (`data.embedding_dim > 0`, e.g. CLIP text embeddings): 'add' (projected
      # and added to c, where the label embedding goes) | 'tokens' (extra tokens); its null:
      # 'zero' (the zero vector) | 'learned' (a learned vector replaces null rows).
      embedding_mode="add", embedding_null="zero",
      # Guidance as a network input (improved shortcut models, iMF): the DiT embeds a guidance
      # scale w (`core.guidance`'s meaning: 1 = conditional) like t and the step size, and with
      # `guidance_interval` the interval [t_min, t_max] it applies to; such a model samples a
      # guided image with one network call per step. Off: the original's network.
      guidance_input=False, guidance_interval=False,
  ))
  c.objective = ml_collections.ConfigDict(dict(
      name="shortcut", denoise_timesteps=128, bootstrap_every=8, bootstrap_ema=True,
      bootstrap_dt_bias=0, bootstrap_cfg=False, cfg_scale=1.5, class_dropout_prob=0.1,
      faithful=False,  # True: the original's level assignment and key reuse, bit for bit.
      # What `faithful` reproduces (`objectives.flow_path.FAITHFUL_SCOPES`): 'update' the
      # original's update step (it shuffles the batch, and nulls the labels when cfg_scale = 0,
      # before `get_targets`); 'get_targets' that function alone, on the batch as given.
      faithful_scope="update",
      # Classifier-free-guidance dropout of a conditioning image (null: the zero image); a model
      # trained with it > 0 nulls the image in the unconditional CFG branch.
      image_dropout_prob=0.0,
      embedding_dropout_prob=0.1,  # CFG dropout of a vector condition (`embedding`).
      path="linear",  # Interpolation path (core.paths): 'linear' | 'smoothstep' | 'cosine'.
      # Where flows start (objectives.flow_path.Source): 'gaussian' noise (the original) or
      # 'cond_image' (coupling flow matching from the upsampled LR input of super-resolution
      # data), optionally noised by the DDPM forward process at `source_noise_step` (0 = none;
      # linear 1,000-step schedule).
      source="gaussian", source_noise_step=0,
      # MeanFlow (objective 'meanflow'): logit-normal (mu, sigma) of the paper's times, share of
      # the batch with r = t, adaptive loss weight 1 / (mse + c)^p.
      meanflow_time_mu=-0.4, meanflow_time_sigma=1.0, meanflow_equal_share=0.75,
      meanflow_adaptive_p=1.0, meanflow_adaptive_c=1e-3,
      # iMF (objective 'imf', `objectives.imf`; MeanFlow's fields above apply too): the guidance
      # scale of each row has density ∝ w^-beta on [1, 1 + imf_guidance_max] (the paper's 7, 1).
      imf_guidance_max=7.0, imf_guidance_beta=1.0,
      # α-Flow (objective 'alphaflow', `objectives.alphaflow`; MeanFlow's fields apply too): the
      # curriculum α(k) from 1 to 0 between steps `start` and `end` (`alphaflow_end`, below: it
      # follows max_steps unless set; a sigmoid of steepness gamma, snapped at eta), the
      # target's clip, and its guidance ṽ = omega v + kappa u(c) + (1 - omega - kappa) u(null)
      # where t is in [cfg_t_min, cfg_t_max] (omega 1, kappa 0: none).
      alphaflow_start=0, alphaflow_gamma=25.0,
      alphaflow_eta=5e-3, alphaflow_clamp=4.0, alphaflow_cfg_omega=1.0, alphaflow_cfg_kappa=0.0,
      alphaflow_cfg_t_min=0.0, alphaflow_cfg_t_max=1.0,
      # HOMO (objective 'homo'): loss weights of the velocity, acceleration and self-consistency
      # terms (1.0 / 0.5 / 0.1, not tuned here), whether the self-consistency rows also
      # train the acceleration, and whether u1's velocity enters u2 without its gradient.
      homo_lambda_v=1.0, homo_lambda_a=0.5, homo_lambda_sc=0.1, homo_sc_acceleration=True,
      homo_velocity_stop_grad=False,
      # Improved shortcut models (iSM; objective 'shortcut'), each off by default. Twin EMA:
      # the bootstrap teacher is an EMA of the online weights at this rate (the paper: 0.95),
      # kept in the objective state, apart from the sampling EMA (`optim.ema_rate`); 0: off,
      # the teacher is the one `bootstrap_ema` picks. Wavelet loss: the error through this many
      # Haar levels (the paper: 5; fewer where the size does not allow), each sub-band weighted
      # equally (`core.wavelets`); 0: the per-sample MSE.
      target_ema_rate=0.0, wavelet_levels=0,
      # Intrinsic guidance (iSM; needs model.guidance_input): each row's guidance omega is drawn
      # from {0, grid, 2 grid, ..., guidance_max} (the paper: 0.25 up to 3.5; 0: off) and given
      # to the network as w = 1 + omega; flow rows regress v + omega sg(v_c - v_u) (the
      # teacher's conditional and unconditional velocities), self-consistency rows pass w to
      # the teacher; no guidance in the target where t < guidance_t_min (the paper: 0.3).
      guidance_max=0.0, guidance_grid=0.25, guidance_t_min=0.0,
      # sOT (iSM; objectives 'shortcut' and 'naive', Gaussian source, `data.ot_coupling`): pool
      # this many batches, match their noise to their images by one optimal assignment (the
      # paper: 32); 0: independent noise. `ot_within_class`: solve it within each class label
      # (the paper's assignment is label-blind; on class-conditional digits that costs the
      # class, docs/results.md).
      ot_pool=0, ot_within_class=False,
      # A coupling flow from one point (source 'cond_image', no source noise): this share of
      # the shortcut objective's flow rows trains the one-step level at t = 0 on the flow
      # target, which is exact there (`objectives.top_level_anchor`); 0: off.
      top_level_share=0.0,
  ))
  # The original's baselines (objectives.progressive, .consistency): the frozen teacher of
  # 'progressive' and 'consistency-distillation' is the training workdir (or one
  # `<workdir>/checkpoints/<step>` folder) of a flow-matching run of the same model and data,
  # at checkpoint `teacher_step` (-1: its latest). `schedule_steps` is the number of training
  # steps over which progressive distillation's phases and consistency training's N schedule
  # run (the original's max_steps; it follows `max_steps` unless set).
  c.objective.teacher_workdir = ml_collections.FieldReference(None, field_type=str)
  c.objective.teacher_step = -1
  # Fine-tuning (`shortcut_jax.train.finetune`): a run without checkpoints of its own starts from the
  # weights of the training workdir `workdir` (or one `<workdir>/checkpoints/<step>` folder) at
  # checkpoint `step` (-1: its latest), its 'ema' or 'online' weights; fresh optimizer, step 0.
  c.init = ml_collections.ConfigDict(dict(
      workdir=ml_collections.FieldReference(None, field_type=str), step=-1, weights="ema"))
  c.objective.schedule_steps = c.get_ref("max_steps") + 0
  c.objective.alphaflow_end = c.get_ref("max_steps") + 0
  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-4, b1=0.9, b2=0.999, weight_decay=0.1, warmup_steps=0, schedule="constant",
      ema_rate=0.999,
      grad_clip_norm=0.0,  # > 0: gradients clipped to this global L2 norm before AdamW; 0 = off.
      weight_decay_mask="all",  # 'all' (the original: decay everything) | 'no_bias_norm_embed'.
      # Gradient accumulation (`train.accumulation`): each update averages the gradients of this
      # many microbatches of batch_size / accumulate_steps rows (1 = off).
      accumulate_steps=1,
  ))
  c.data = ml_collections.ConfigDict(dict(
      name="digits", image_size=16, num_classes=10,
      data_dir=ml_collections.FieldReference(None, field_type=str),  # None: TFDS default.
      folder=ml_collections.FieldReference(None, field_type=str),  # For name='image_folder'.
      # Super-resolution: 0 = none; 2, 4 or 8 = every batch also gets `cond_image`, the HR image
      # downsampled by this factor (antialiased) and bicubic-upsampled back to image_size. HR
      # images are then crops of image_size (random crop + flip in training, centre crop in
      # evaluation) instead of resized images.
      low_res_factor=0,
      # Training augmentation on top of the dataset's flips: each training image is also turned
      # by a random multiple of 90 degrees (square images; pixel or online-latent pipelines).
      random_rot90=False,
      # Files of a split read at once (`data.pipeline.stored_order_read_config`): they are read
      # ahead concurrently, and the examples still come in the stored order (exact resumption).
      parallel_reads=8,
      # Latent space (the paper's ImageNet / CelebA-HQ runs): 'none' (pixels), 'online' (the
      # frozen VAE of `vae` encodes each batch inside the train step: the original's way) or
      # 'precomputed' (posterior moments
      # written once by `python -m shortcut_jax.tools.encode_dataset` into `latents_dir`).
      latents="none",
      latents_dir=ml_collections.FieldReference(None, field_type=str),
      # Text / vector conditioning: > 0 = every example carries `embedding`, a float32 vector
      # of this size (a TFDS feature 'embedding'; for `image_folder`, the .npz `embeddings`
      # written by `python -m shortcut_jax.tools.embed_text`).
      embedding_dim=0,
      embeddings=ml_collections.FieldReference(None, field_type=str),
      # `embeddings='digit_words'` (digits only): each example's embedding is its class word's
      # fixed vector plus noise of this standard deviation (`shortcut_jax.text_encoders`).
      embedding_noise=0.0,
      # The CLIP text model folder the embeddings were made with (`tools.embed_text --model`):
      # `eval.py --mode=sample --prompts=FILE` embeds prompts with it.
      text_model=ml_collections.FieldReference(None, field_type=str),
  ))
  # The Stable Diffusion VAE of latent runs: `path` is a folder (diffusers or Flax layout) or a
  # hub id (None: $SHORTCUT_JAX_VAE, else stabilityai/sd-vae-ft-mse); `random_init` builds a tiny
  # randomly initialised VAE in process instead (smoke runs; no files).
  c.vae = ml_collections.ConfigDict(dict(
      path=ml_collections.FieldReference(None, field_type=str), dtype="float32", chunk_size=16,
      random_init=False,
  ))
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=1_000, max_to_keep=3, async_save=True))
  # Scale-out: mesh axis sizes (-1 = all remaining devices) and the parameter sharding mode.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
  c.sharding = "dp"
  c.evals = ml_collections.ConfigDict(dict(
      # `guidance_interval`: the (t_min, t_max) a model with a guidance-interval input
      # (`model.guidance_interval`) is told when sampling, here and in eval.py (whose
      # --guidance_interval overrides it); the guidance scale is `cfg_scale`.
      samples=dict(every=-1, steps=(1, 2, 4, 8, 16, 32, 64, 128), num_images=64, cfg_scale=1.5,
                   use_ema=True, guidance_interval=(0.0, 1.0)),
      loss_per_t=dict(every=-1, num_batches=2, num_bins=16),
      validation=dict(every=-1, num_batches=4),
      # FID against `stats_path` (an .npz with mu/sigma, e.g. from `eval.py --mode=fid_stats`)
      # with the Inception weights at `inception_path` (None: $SHORTCUT_JAX_INCEPTION). Off by
      # default (every=0): it needs both files, which are read before training starts.
      # `protocol` (`shortcut_jax.core.guidance`): 'guided' (`cfg_scale` at every budget of `steps`,
      # EMA weights) or 'original' (the original's: `steps` at cfg 1, one more entry at
      # `cfg_scale` with objective.denoise_timesteps steps, online weights; the paper configs').
      # `use_ema` None: the protocol's weights. eval.py --mode=fid reads these fields too.
      # `extra_metrics`: ADM's metrics of the same samples besides FID (`EXTRA_FID_METRICS`:
      # 'is', 'sfid', 'precision_recall'; evaluators/adm_metrics.py); they need an ADM
      # reference batch at `stats_path` where images are needed, and 'is' the classifier weights.
      fid=dict(every=0, steps=(1, 4, 128), num_samples=4096, cfg_scale=1.5,
               stats_path=ml_collections.FieldReference(None, field_type=str),
               inception_path=ml_collections.FieldReference(None, field_type=str),
               batch_size=256, use_ema=ml_collections.FieldReference(None, field_type=bool),
               protocol="guided", extra_metrics=()),
  ))
  return c



@functools.lru_cache(maxsize=None)
def _defaults():
  return base_config().to_dict()


def default(section: str, name: str):
  """The schema's default of `<section>.<name>` (e.g. 'objective', 'cfg_scale')."""
  fields = _defaults().get(section)
  if not isinstance(fields, dict) or name not in fields:
    raise KeyError(f"the config schema (core/schema.py) has no field {section}.{name}")
  return fields[name]
