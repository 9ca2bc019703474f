"""Speed of the test-time preprocessing (reference §1.2): NumPy on the host vs the device path.

For each photo size (random uint8 RGB, ``--sizes`` as HxW), the resize to a
long side of ``--image_size`` with BGR and the VGG mean:

* ``numpy``: ``data.images.prepare_test_image`` plus the display image, as
  ``DenseCapPredictor.prepare`` does on the host (one image at a time);
* ``device``: ``data.device_resize``, as ``DenseCapPredictor.batches`` runs
  it: ``batch_arrays`` on the host (padding into the input bucket, taps),
  the transfer, and the jitted ``resize_batch`` on the default JAX device
  (the CPU here), at batch ``--batch``, timed after one call compiled it;
* ``device host part``: ``batch_arrays`` alone, what the host still does;
* ``decode``: Pillow's JPEG decode of the photo (quality 90), for scale --
  it stays on the host either way.

It also checks that the two paths give the same model input bit for bit.

  python benchmarks/preprocess.py [--sizes 3000x4000,768x1024] [--image_size 720] [--batch 1]
"""

import argparse
import io
import time

import jax
import numpy as np
from PIL import Image

from densecap_jax.configs import buckets as buckets_lib
from densecap_jax.data import device_resize
from densecap_jax.data import images as images_lib


def host_prepare(rgb, image_size):
  model_input = images_lib.prepare_test_image(rgb, image_size)
  display = np.clip(np.rint((model_input + images_lib.VGG_MEAN_BGR)[..., ::-1]), 0, 255)
  return model_input, display.astype(np.uint8)


def per_second(fn, repeats, count=1):
  """Images per second of ``fn`` (which handles ``count`` images), best of ``repeats`` runs."""
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return count / best


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="3000x4000,768x1024", help="photo sizes, HxW")
  parser.add_argument("--image_size", type=int, default=720, help="long side after resizing")
  parser.add_argument("--batch", type=int, default=1, help="images per device call")
  parser.add_argument("--repeats", type=int, default=5, help="timed runs (best is kept)")
  args = parser.parse_args(argv)
  buckets = buckets_lib.make_buckets(args.image_size)
  rng = np.random.default_rng(0)
  print(f"JAX {jax.__version__} on {jax.devices()[0].device_kind}, NumPy {np.__version__}; "
        f"images/s, best of {args.repeats}")
  print()
  print("| photo | resized | numpy | device | device host part | decode (JPEG) | identical |")
  print("|---|---|---:|---:|---:|---:|---|")
  for text in args.sizes.split(","):
    height, width = (int(v) for v in text.lower().split("x"))
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    size = images_lib.torch_scale_size(height, width, args.image_size)
    bucket = buckets_lib.pick_bucket(*size, buckets)
    rgbs, sizes = [rgb] * args.batch, [size] * args.batch
    zero = np.uint32(0)

    def device_run():
      arrays = device_resize.batch_arrays(rgbs, sizes, bucket, args.batch)
      jax.block_until_ready(device_resize.resize_batch_jit(**jax.device_put(arrays), zero=zero))

    device_run()  # compiles
    numpy_rate = per_second(lambda: host_prepare(rgb, args.image_size), args.repeats)
    device_rate = per_second(device_run, args.repeats, args.batch)
    host_part = per_second(lambda: device_resize.batch_arrays(rgbs, sizes, bucket, args.batch),
                           args.repeats, args.batch)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=90)
    encoded = buffer.getvalue()
    decode_rate = per_second(lambda: np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB")),
                             args.repeats)
    host_input, _ = host_prepare(rgb, args.image_size)
    arrays = device_resize.batch_arrays([rgb], [size], bucket, 1)
    device_input = np.asarray(device_resize.resize_batch_jit(**arrays, zero=zero)[0])[0]
    same = np.array_equal(device_input[:size[0], :size[1]], host_input)
    print(f"| {height}x{width} | {size[0]}x{size[1]} | {numpy_rate:.1f} | {device_rate:.1f} | "
          f"{host_part:.0f} | {decode_rate:.1f} | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
  main()
