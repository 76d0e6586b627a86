"""FID Inception throughput, the library's Flax port against PyTorch, measured side by side.

  python benchmarks/inception_speed.py [--batch_size=64] [--rounds=7] [--threads=2]
      [--variants=flax,flax:cpu_devices=2,flax:precision=default,flax:xla=--xla_cpu_use_onednn=true,torch]
      [--out=F.json]

Each variant runs in its own long-lived worker process (XLA flags are fixed when jax starts),
compiled and warmed up first; the parent then asks the workers for one timed batch each, in
turn, `rounds` times (the order rotates every round), so the variants share whatever else
the machine is doing. Reported: the median images/s per variant (and min/max), and each one's
ratio to the torch variant. Inputs: random images at 299x299 (no resize) or `--input_size`
(resized inside the network, as FID of small images does), random weights (the speed does
not depend on the values).

Variants: `flax` (`InceptionV3`, the library's FID network) with `:precision=default|highest`,
`:xla=<XLA_FLAGS>` (`+` joins several flags) and `:pools=reduce_window` (the pools as
`nn.max_pool` / `nn.avg_pool`, as before the rewrite); `flax:cpu_devices=<n>`: what eval.py's
FID runs on a CPU-only machine, `shortcut_jax.parallel.cpu_devices.configure(n)` (n single-threaded XLA CPU
devices) and the FID evaluator's `InceptionFeatures` (the same jitted network, every batch split
over the n devices, weights replicated), timed on a batch already placed on the devices like the
other variants; add `:transfer=1` to time `InceptionFeatures.batch_features` on a host batch
instead (the copy in and the features out included); `torch`:
pytorch-fid's `InceptionV3` when `pytorch_fid` and `torchvision` import, else the same network
written with torch.nn.functional over a pytorch-fid state dict (the ops pytorch-fid runs in
eval mode: conv2d, batch_norm, relu, pools, bilinear interpolate). Without torch the torch
variant is skipped (reported as such).
"""

import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 64, "Images per timed call.")
flags.DEFINE_integer("input_size", 299, "Input side (299: no resize inside the network).")
flags.DEFINE_integer("rounds", 7, "Timed batches per variant (alternating).")
flags.DEFINE_integer("threads", 2, "Threads for torch (XLA uses every core).")
flags.DEFINE_string("variants", "flax,torch", "Comma-separated variants (see the docstring).")
flags.DEFINE_string("worker", None, "Internal: run one variant as a worker.")
flags.DEFINE_string("out", None, "Also write the JSON here.")


def _parse(variant):
  name, *opts = variant.split(":")
  options = {}
  for opt in opts:
    key, _, value = opt.partition("=")
    options[key] = value
  return name, options


def _flax_worker(options, batch_size, input_size):
  devices = int(options.get("cpu_devices", 0))
  if devices:
    from shortcut_jax.parallel import cpu_devices
    if cpu_devices.configure(devices) != devices:
      raise SystemExit(f"cpu_devices={devices}: not applied (XLA_FLAGS={os.environ.get('XLA_FLAGS')!r}"
                       " already sets the device count or the threading?)")
    if batch_size % devices:
      raise SystemExit(f"--batch_size={batch_size} is not a multiple of cpu_devices={devices}")
  if options.get("xla"):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " "
                               + options["xla"].replace("+", " "))
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax
  import numpy as np
  from shortcut_jax.models import inception
  rng = np.random.default_rng(0)
  flat = {}
  for path, shape in inception.expected_variable_shapes().items():
    if path.endswith("kernel"):
      flat[path] = rng.normal(size=shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
    else:
      flat[path] = np.ones(shape) if path.endswith(("var", "scale")) else np.zeros(shape)
  variables = inception.unflatten_variables({k: v.astype(np.float32) for k, v in flat.items()})
  if options.get("pools") == "reduce_window":  # The port's pools before the slice rewrite.
    import flax.linen as nn
    inception._avg_pool_3x3 = lambda x: nn.avg_pool(
        x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)
    inception._max_pool_3x3 = lambda x: nn.max_pool(x, (3, 3), strides=(1, 1),
                                                    padding=((1, 1), (1, 1)))
    inception._max_pool_3x3_stride2 = lambda x: nn.max_pool(x, (3, 3), strides=(2, 2),
                                                            padding="VALID")
  images = np.random.default_rng(0).uniform(
      -1, 1, (batch_size, input_size, input_size, 3)).astype(np.float32)
  if devices:
    from shortcut_jax.evaluators import fid_evaluator
    from shortcut_jax.evaluators import batch_rows
    assert jax.device_count() == devices, jax.devices()
    features = fid_evaluator.InceptionFeatures(
        variables, batch_size=batch_size, image_size=299 if input_size != 299 else None)
    if options.get("transfer"):
      run = lambda: features.batch_features(images)
    else:
      placed = batch_rows.put_batch(images, features.mesh)
      run = lambda: jax.block_until_ready(features._apply(features._variables, placed))
    run()
    return run
  precision = {"default": jax.lax.Precision.DEFAULT, "highest": jax.lax.Precision.HIGHEST}[
      options.get("precision", "highest")]
  model = inception.InceptionV3(image_size=299 if input_size != 299 else None,
                                antialias=False, clip=True, precision=precision)
  variables = jax.device_put(variables)
  apply = jax.jit(model.apply)
  images = jax.device_put(images)
  jax.block_until_ready(apply(variables, images))
  return lambda: jax.block_until_ready(apply(variables, images))


def _torch_state_dict():
  """Random pytorch-fid state dict with the Flax port's shapes (names match pytorch-fid's)."""
  import numpy as np
  from shortcut_jax.models import inception
  rng = np.random.default_rng(0)
  sd = {}
  for path, shape in inception.expected_variable_shapes().items():
    collection, *module, leaf = path.split("/")
    prefix = ".".join(module)
    if leaf == "kernel":  # [kh, kw, in, out] -> [out, in, kh, kw]
      kh, kw, cin, out = shape
      sd[f"{prefix}.weight"] = (rng.normal(size=(out, cin, kh, kw)) *
                                np.sqrt(2.0 / (kh * kw * cin))).astype(np.float32)
    else:
      name = {"scale": "weight", "bias": "bias", "mean": "running_mean",
              "var": "running_var"}[leaf]
      value = np.ones(shape) if leaf in ("scale", "var") else np.zeros(shape)
      sd[f"{prefix}.{name}"] = value.astype(np.float32)
  del collection
  return sd


def _torch_worker(options, batch_size, input_size, threads):
  del options
  import numpy as np
  import torch
  torch.set_num_threads(threads)
  try:
    from pytorch_fid.inception import InceptionV3  # Needs torchvision.
    # Its FID blocks download their weights; torchvision's blocks run the same convolutions.
    model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=input_size != 299,
                        normalize_input=False, use_fid_inception=False).eval()
    forward, impl = (lambda x: model(x)[0]), "pytorch_fid.InceptionV3"
  except Exception:  # pylint: disable=broad-except  (no pytorch_fid / torchvision)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    from torch_inception import functional_inception  # The tests' pytorch-fid reference.
    forward, impl = functional_inception(torch, _torch_state_dict()), "torch.nn.functional"
  images = torch.from_numpy(np.random.default_rng(0).uniform(
      -1, 1, (batch_size, 3, input_size, input_size)).astype(np.float32))

  def run():
    with torch.no_grad():
      forward(images)
  run()
  return run, impl


def worker(variant):
  name, options = _parse(variant)
  impl = name
  if name == "flax":
    run = _flax_worker(options, FLAGS.batch_size, FLAGS.input_size)
  elif name == "torch":
    run, impl = _torch_worker(options, FLAGS.batch_size, FLAGS.input_size, FLAGS.threads)
  else:
    raise ValueError(f"unknown variant {variant!r}")
  print(json.dumps({"ready": True, "impl": impl}), flush=True)
  for line in sys.stdin:
    if line.strip() != "run":
      break
    t0 = time.perf_counter()
    run()
    print(json.dumps({"seconds": time.perf_counter() - t0}), flush=True)


def main(argv):
  del argv
  if FLAGS.worker:
    return worker(FLAGS.worker)
  from common import emit_json
  variants = [v for v in FLAGS.variants.split(",") if v]
  workers, results = {}, {}
  for v in variants:
    if _parse(v)[0] == "torch":
      try:
        import torch  # noqa: F401
      except ImportError:
        results[v] = {"skipped": "torch is not installed"}
        continue
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), f"--worker={v}",
         f"--batch_size={FLAGS.batch_size}", f"--input_size={FLAGS.input_size}",
         f"--threads={FLAGS.threads}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    ready = json.loads(proc.stdout.readline())  # Compiled and warmed up, one at a time.
    workers[v] = proc
    results[v] = {"impl": ready["impl"], "seconds": []}
  order = list(workers)
  for r in range(FLAGS.rounds):
    for v in order[r % len(order):] + order[:r % len(order)]:
      workers[v].stdin.write("run\n")
      workers[v].stdin.flush()
      results[v]["seconds"].append(json.loads(workers[v].stdout.readline())["seconds"])
  for proc in workers.values():
    proc.stdin.write("quit\n")
    proc.stdin.close()
    proc.wait()
  torch_key = next((v for v in workers if _parse(v)[0] == "torch"), None)
  for v in workers:
    s = results[v]["seconds"]
    results[v].update(images_per_s_median=FLAGS.batch_size / statistics.median(s),
                      images_per_s_min=FLAGS.batch_size / max(s),
                      images_per_s_max=FLAGS.batch_size / min(s))
  for v in workers:
    if torch_key:
      results[v]["ratio_to_torch"] = (results[v]["images_per_s_median"]
                                      / results[torch_key]["images_per_s_median"])
  emit_json({"benchmark": "inception_speed", "batch_size": FLAGS.batch_size,
             "input_size": FLAGS.input_size, "rounds": FLAGS.rounds, "threads": FLAGS.threads,
             "cpu_count": os.cpu_count(), "variants": results}, FLAGS.out)


if __name__ == "__main__":
  app.run(main)
