"""The tiny model trained from scratch on the synthetic dataset (CPU-friendly).

Data: ``python -m densecap_jax.data.synthetic`` then ``python -m
densecap_jax.data.preprocess`` (see the README). With no ImageNet weights every
conv layer is trained from the start.
"""

from densecap_jax.data import synthetic_world
from densecap_jax.train.configs import common


def get_config():
  config = common.get_config("tiny")
  config.model.frozen_blocks = 0
  config.finetune_cnn_after = 0
  # Trained from scratch: the images start the CNN near unit scale, as
  # ImageNet weights would, and a bag-of-words head keeps what the captions
  # name in the region codes (``configs/vgg16_model.py``).
  config.model.input_scale = 1 / 64
  config.model.word_loss_weight = 0.1
  # The synthetic boxes are tight around crisp shapes, and the evaluation
  # asks for IoU up to 0.7: ten times the original's box-regression weights
  # (0.05, 0.1). benchmarks/README.md ("The bundled model's recipe") has the runs.
  config.model.mid_box_reg_weight = 0.5
  config.model.end_box_reg_weight = 1.0
  # Trained for detection, the deep layers drop the colour and shape the
  # captions name: the region codes also pool conv1, conv2 (colour) and
  # conv4 (shape), and the captions train those blocks through them. The
  # proposals are fixed for the recognition network (Faster R-CNN's rule),
  # which keeps the RPN's boxes from running off with the appended channels.
  config.model.cnn_skip_blocks = (1, 2, 4)
  config.model.cnn_skip_gradient = True
  config.model.fixed_proposals = True
  # Test time: the RPN's NMS keeps proposals up to IoU 0.9 (the original: 0.7)
  # of the 300; chosen on the validation split (benchmarks/README.md).
  config.model.rpn_nms_thresh = 0.9
  # The bundled recipe starts from region-attribute pretraining, its relu5_3
  # scaled to the RMS a trained detector's has (``make bundled-model``).
  config.pretrain.feature_rms = 0.086
  config.data_h5 = "data/synthetic/regions.h5"
  config.data_json = "data/synthetic/regions-dicts.json"
  config.per_device_batch_size = 2
  config.shuffle = True
  config.learning_rate = 1e-3
  config.lr_schedule = "cosine"
  config.warmup_steps = 200
  config.max_iters = 16000
  config.save_checkpoint_every = 2000
  config.losses_log_every = 10
  config.val_images_use = 300
  config.val_attribute_words = synthetic_world.ATTRIBUTE_WORDS
  config.val_attribute_joint = ("colour", "shape")
  return config
