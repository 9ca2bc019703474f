"""The released DenseCap model: VGG-16, 720-pixel images (reference §2–§7).

Sizes and weights are the original's defaults (``train_opts.lua``,
``DenseCapModel.lua``, ``LocalizationLayer.lua``, ``LanguageModel.lua``).
Additions needed for static shapes: ``buckets`` (padded image sizes, §1) and
``max_gt_boxes`` (ground-truth regions per image after padding).
"""

import ml_collections
from ml_collections import config_dict

from densecap_jax.configs import buckets as buckets_lib
from densecap_jax.ops import anchors as anchors_lib

VGG16_WIDTHS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def get_config():
  """The ``vgg16`` model config."""
  config = ml_collections.ConfigDict()
  config.name = "vgg16"

  # Data: images resized to a long side of ``image_size`` and padded into buckets.
  config.image_size = 720
  config.buckets = buckets_lib.make_buckets(config.image_size)  # recompute if image_size changes
  config.vocab_size = config_dict.placeholder(int)  # V, set from the vocabulary.
  config.seq_length = 15  # L, tokens per caption.
  # Ground-truth regions per image after padding. Visual Genome images have a
  # few dozen regions on average; images with more must be handled by the
  # loader (this is a padding size, not a property of the original).
  config.max_gt_boxes = 256
  # How convs and matrix products compute (``configs.PRECISIONS``): "float32"
  # is exact (the original's FP32, every backend's highest precision); "tf32"
  # and "bfloat16" trade fidelity for speed (``models/precision.py``).
  config.precision = "float32"

  # Backbone (§2): conv widths per block; four ceil-mode pools (stride 16).
  config.cnn_widths = VGG16_WIDTHS
  config.frozen_blocks = 2  # conv1_1 .. conv2_2 never receive gradient.
  # Images are multiplied by this before conv1_1 (1.0 = the original). Not a
  # change for ImageNet weights; for a network trained from scratch it sets
  # the scale its codes start at (``VGG16.input_scale``).
  config.input_scale = 1.0
  # Empty: the RoI codes are pooled from relu5_3 alone (the original). Block
  # numbers append those blocks' outputs, averaged per stride-16 cell, to
  # relu5_3's channels for the RoI codes; the RPN keeps relu5_3 alone
  # (``VGG16.skip_blocks``, ``DenseCap.rpn``).
  config.cnn_skip_blocks = ()
  # True: the RoI codes' losses also train those blocks through their
  # appended channels (``VGG16.skip_gradient``); False: no gradient there.
  config.cnn_skip_gradient = False

  # Localization layer (§3).
  config.rpn_num_filters = 256
  config.anchor_sizes = tuple(tuple(float(v) for v in wh) for wh in anchors_lib.VGG16_ANCHOR_SIZES)
  config.anchor_scale = 1.0
  config.field_centers = anchors_lib.VGG16_FIELD_CENTERS  # (x0, y0, sx, sy)
  config.roi_output_size = (7, 7)
  config.sampler_batch_size = 256
  config.sampler_high_thresh = 0.7
  config.sampler_low_thresh = 0.3
  config.train_remove_outbounds_boxes = True
  # False: the sampler matches the predicted boxes to the ground truth (the
  # original, §3.5); True: the anchors (``localization.sample_rois``).
  config.sample_on_anchors = False
  # True: the RPN's losses come from a second minibatch matched on the anchors,
  # the recognition network's from the one above (``models/training.py``).
  config.rpn_sample_on_anchors = False
  # True: no gradient from pooling or the final box regression reaches the
  # RoI boxes (Faster R-CNN's proposals); False: the original, where the RPN
  # boxes receive it through the bilinear sampler (§4).
  config.fixed_proposals = False
  config.box_reg_decay = 5e-5
  config.std = 0.01  # init std of the new layers (RPN convs, objectness)

  # Recognition network (§5) and language model (§6).
  config.fc_dim = 4096
  config.drop_prob = 0.5
  config.rnn_size = 512
  config.rnn_encoding_size = 512

  # Loss weights (§4.1).
  config.mid_objectness_weight = 0.1
  config.mid_box_reg_weight = 0.05
  config.end_objectness_weight = 0.1
  config.end_box_reg_weight = 0.1
  config.captioning_weight = 1.0
  # Not the original's: weight of a bag-of-words head on the region codes
  # (``losses.word_presence_loss``); 0 = no head, no extra parameters.
  config.word_loss_weight = 0.0

  # Test time (§3.6, §5).
  config.num_proposals = 1000
  config.rpn_nms_thresh = 0.7
  config.final_nms_thresh = 0.3
  return config
