"""A small member of the DenseCap family for tests, CPU training and demos.

Same architecture as ``vgg16`` (13 convs in five blocks, four ceil-mode pools
at stride 16, RPN, fc6/fc7, one-layer LSTM) with small widths, 256-pixel
images, 64 sampled RoIs and 300 proposals. At 256 pixels the VGG-16 anchors
(scaled by 256 / 720) are too sparse for the 16-pixel stride: few anchors
reach the sampler's IoU of 0.7 with a region, so the RPN sees about seven
positives per image. ``tiny`` uses 17 anchors instead (squares from 16 to 256
pixels in steps of √2, plus 1:2 and 2:1 boxes) and takes positives above an
IoU of 0.5.
"""

from densecap_jax.configs import vgg16_model
from densecap_jax.configs import buckets as buckets_lib


def get_config():
  """The ``tiny`` model config."""
  config = vgg16_model.get_config()
  config.name = "tiny"
  config.image_size = 256
  config.buckets = buckets_lib.make_buckets(config.image_size)
  config.max_gt_boxes = 32
  config.cnn_widths = ((8, 8), (16, 16), (32, 32, 32), (64, 64, 64), (64, 64, 64))
  config.rpn_num_filters = 64
  squares = [16 * 2 ** (i / 2) for i in range(9)]  # 16 .. 256 pixels
  config.anchor_sizes = tuple((s, s) for s in squares) + tuple(
      (s * 2 ** 0.5, s / 2 ** 0.5) for s in squares[1:-1:2]) + tuple(
          (s / 2 ** 0.5, s * 2 ** 0.5) for s in squares[1:-1:2])
  config.anchor_scale = 1.0
  config.sampler_high_thresh = 0.5
  config.sampler_batch_size = 64
  config.fc_dim = 256
  config.rnn_size = 128
  config.rnn_encoding_size = 128
  config.num_proposals = 300
  return config
