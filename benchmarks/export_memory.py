"""Host memory of the HF export: streamed tensor by tensor against the whole model at once, one run.

  python benchmarks/export_memory.py [--model=gemma3_270m] [--dtype=bfloat16] [--max_shard_bytes=5000000000]

Each way runs in its own process on the same model (random weights of the named config; the
numbers do not depend on their values): `export_hf` as it is, and the way it was before (all at once)
(every tensor gathered to the host in fp32, laid out as HF's, cast, and handed to
`safetensors.numpy.save_file` at once). A thread samples the process's resident memory every 2 ms
during the export; the figure is the peak above the resident memory just before it. Printed: both
peaks, their ratio, against the model's bytes in the export dtype and its largest tensor, and both
times.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def resident_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakResident:
  """The highest resident memory seen while the block runs, sampled every 2 ms."""

  def __enter__(self):
    self.start = self.peak = resident_bytes()
    self._done = threading.Event()
    self._thread = threading.Thread(target=self._watch, daemon=True)
    self._thread.start()
    return self

  def _watch(self):
    while not self._done.wait(0.002):
      self.peak = max(self.peak, resident_bytes())

  def __exit__(self, *exc):
    self._done.set()
    self._thread.join()
    self.peak = max(self.peak, resident_bytes())


def whole_model_export(model, directory: str, dtype: str) -> None:
  """The export before streaming: every tensor on the host in fp32 at once, then one file."""
  import ml_dtypes
  import numpy as np
  from flax import nnx
  from safetensors.numpy import save_file

  from swirl_jax.checkpoints import safetensors_export as export
  variables = dict(nnx.to_flat_state(nnx.state(model)))
  flat = {path: np.asarray(v.get_value(), np.float32) for path, v in variables.items()}
  tensors = {}
  for tensor in export.hf_plan(model):
    array = flat[tensor.path] if tensor.layer is None else flat[tensor.path][tensor.layer]
    key = tuple(p for p in tensor.path if isinstance(p, str))
    tensors[tensor.name] = np.ascontiguousarray(np.asarray(export._layout_change(key)(array)), np.float32)
  if dtype == "bfloat16":
    tensors = {name: array.astype(ml_dtypes.bfloat16) for name, array in tensors.items()}
  os.makedirs(directory, exist_ok=True)
  save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})


def child(way: str, model_name: str, dtype: str, max_shard_bytes: int) -> dict:
  import numpy as np
  from flax import nnx

  from swirl_jax.checkpoints import safetensors_export as export
  from swirl_jax.models import init_model, model_config
  model = init_model(model_config(model_name), seed=0)
  plan = export.hf_plan(model)
  itemsize = 4 if dtype == "float32" else 2
  sizes = [int(np.prod(t.shape)) * itemsize for t in plan]
  params = sum(int(np.prod(v.get_value().shape)) for _, v in nnx.to_flat_state(nnx.state(model)))
  with tempfile.TemporaryDirectory() as directory:
    start = time.perf_counter()
    with PeakResident() as memory:
      if way == "streamed":
        export.export_hf(model, directory, dtype=dtype, max_shard_bytes=max_shard_bytes)
      else:
        whole_model_export(model, directory, dtype)
    seconds = time.perf_counter() - start
  return {"way": way, "extra_bytes": memory.peak - memory.start, "seconds": seconds, "model_bytes": sum(sizes),
          "largest_tensor_bytes": max(sizes), "params": params}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="gemma3_270m")
  parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
  parser.add_argument("--max_shard_bytes", type=int, default=5 * 10**9)
  parser.add_argument("--child", default="")
  args = parser.parse_args(argv)
  if args.child:
    print(json.dumps(child(args.child, args.model, args.dtype, args.max_shard_bytes)))
    return {}
  results = {}
  for way in ("whole", "streamed"):
    done = subprocess.run([sys.executable, os.path.abspath(__file__), f"--child={way}", f"--model={args.model}",
                           f"--dtype={args.dtype}", f"--max_shard_bytes={args.max_shard_bytes}"],
                          capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    if done.returncode:
      raise SystemExit(done.stderr[-3000:])
    results[way] = json.loads(done.stdout.strip().splitlines()[-1])
  whole, streamed = results["whole"], results["streamed"]
  gb = 1e9
  print(f"{args.model} ({whole['params'] / 1e6:.0f}M params) exported in {args.dtype}: {whole['model_bytes'] / gb:.3f} GB "
        f"of weights, largest tensor {whole['largest_tensor_bytes'] / gb:.3f} GB")
  print(f"host memory above the model during the export: whole model at once {whole['extra_bytes'] / gb:.3f} GB, "
        f"streamed {streamed['extra_bytes'] / gb:.3f} GB: {whole['extra_bytes'] / max(streamed['extra_bytes'], 1):.1f}x "
        f"less ({streamed['extra_bytes'] / whole['largest_tensor_bytes']:.2f} x the largest tensor)")
  print(f"time: whole {whole['seconds']:.2f} s, streamed {streamed['seconds']:.2f} s "
        f"({whole['seconds'] / streamed['seconds']:.2f}x)")
  return results


if __name__ == "__main__":
  main()
