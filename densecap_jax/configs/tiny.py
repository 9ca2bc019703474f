"""A small member of the DenseCap family for tests, CPU training and demos.

Same architecture as ``vgg16`` (13 convs in five blocks, four ceil-mode pools
at stride 16, RPN, fc6/fc7, one-layer LSTM) with small widths, 256-pixel
images, anchors scaled by 256 / 720, 64 sampled RoIs and 100 proposals.
"""

from densecap_jax.configs import vgg16
from densecap_jax.data import buckets as buckets_lib


def get_config():
  """The ``tiny`` model config."""
  config = vgg16.get_config()
  config.name = "tiny"
  config.image_size = 256
  config.buckets = buckets_lib.make_buckets(config.image_size)
  config.max_gt_boxes = 32
  config.cnn_widths = ((8, 8), (16, 16), (32, 32, 32), (64, 64, 64), (64, 64, 64))
  config.rpn_num_filters = 64
  config.anchor_scale = config.image_size / 720
  config.sampler_batch_size = 64
  config.fc_dim = 256
  config.rnn_size = 128
  config.rnn_encoding_size = 128
  config.num_proposals = 100
  return config
