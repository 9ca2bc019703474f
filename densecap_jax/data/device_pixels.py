"""The model's input image from the loader's uint8 pixels, computed on the device.

``loader.make_batches(..., pixels='uint8')`` sends the stored pixels (a
quarter of float32's bytes); the jitted step calls :func:`model_batch` (or
:func:`model_images`) first, which gives exactly the float32 image of
``pixels='float32'``: ``float32(pixel) - VGG_MEAN_BGR`` (one IEEE-rounded
subtraction, as NumPy's), channels last, 0 beyond each image's true size and
in padding examples.
"""

import jax.numpy as jnp

from densecap_jax.data import images


def model_images(image, image_size, example_mask=None):
  """The float32 model input of a batch's images.

  Args:
    image: ``(B, 3, Hb, Wb)`` uint8 BGR as stored (channels first), or an
      already converted ``(B, Hb, Wb, 3)`` float32 image, returned as it is.
    image_size: ``(B, 2)`` int true ``(H, W)`` of each image.
    example_mask: ``(B,)`` bool, False for padding examples (all 0); None =
      all real.

  Returns:
    ``(B, Hb, Wb, 3)`` float32 BGR minus ``VGG_MEAN_BGR``, 0 beyond the true
    size and in padding examples.
  """
  if image.dtype != jnp.uint8:
    return image
  height, width = image.shape[2], image.shape[3]
  pixels = jnp.transpose(image, (0, 2, 3, 1)).astype(jnp.float32) - jnp.asarray(
      images.VGG_MEAN_BGR)
  inside = ((jnp.arange(height)[None, :, None] < image_size[:, 0, None, None]) &
            (jnp.arange(width)[None, None, :] < image_size[:, 1, None, None]))
  if example_mask is not None:
    inside = inside & example_mask[:, None, None]
  return jnp.where(inside[..., None], pixels, jnp.float32(0))


def model_batch(batch):
  """``batch`` with its ``image`` in the model's float32 form (:func:`model_images`)."""
  image = model_images(batch["image"], batch["image_size"], batch.get("example_mask"))
  return dict(batch, image=image)
