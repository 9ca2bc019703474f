"""Training options shared by every config, with the original's defaults.

Every option of the original's ``train_opts.lua`` (reference §7.2) maps to a
field here or in ``config.model`` (the model config):

| train_opts.lua                  | here                                           |
|---------------------------------|------------------------------------------------|
| -sampler_batch_size 256         | model.sampler_batch_size                       |
| -rnn_size 512                   | model.rnn_size                                 |
| -sampler_high_thresh 0.7        | model.sampler_high_thresh                      |
| -sampler_low_thresh 0.3         | model.sampler_low_thresh                       |
| -train_remove_outbounds_boxes 1 | model.train_remove_outbounds_boxes             |
| -mid_box_reg_weight 0.05        | model.mid_box_reg_weight                       |
| -mid_objectness_weight 0.1      | model.mid_objectness_weight                    |
| -end_box_reg_weight 0.1         | model.end_box_reg_weight                       |
| -end_objectness_weight 0.1      | model.end_objectness_weight                    |
| -captioning_weight 1.0          | model.captioning_weight                        |
| -box_reg_decay 5e-5             | model.box_reg_decay                            |
| -drop_prob 0.5                  | model.drop_prob                                |
| -weight_decay 1e-6              | weight_decay                                   |
| -data_h5, -data_json            | data_h5, data_json                             |
| -debug_max_train_images -1      | debug_max_train_images                         |
| -learning_rate 1e-5             | learning_rate                                  |
| -optim_beta1/2, -optim_epsilon  | optim_beta1, optim_beta2, optim_epsilon        |
| -max_iters -1                   | max_iters (−1 = run until stopped)             |
| -checkpoint_start_from ''       | checkpoint_start_from (a model directory)      |
| -finetune_cnn_after -1          | finetune_cnn_after                             |
| -val_images_use 1000            | val_images_use                                 |
| -save_checkpoint_every 10000    | save_checkpoint_every                          |
| -checkpoint_path checkpoint.t7  | the --workdir flag                             |
| -test_rpn_nms_thresh 0.7        | test_rpn_nms_thresh (model.rpn_nms_thresh)     |
| -test_final_nms_thresh 0.3      | test_final_nms_thresh (model.final_nms_thresh) |
| -test_num_proposals 1000        | test_num_proposals (model.num_proposals)       |
| -losses_log_every 10            | losses_log_every                               |
| -seed 123                       | seed                                           |
| -eval_first_iteration 0         | eval_first_iteration                           |
| -gpu 0                          | all local accelerators are used                |

Options the original declares but never reads have no field: ``-rpn_hidden_dim``
(the RPN always has ``model.rpn_num_filters`` = 256 filters), ``-input_encoding_size``
(``model.rnn_encoding_size`` is used), ``-proposal_regions_h5``, ``-clip_final_boxes``,
``-progress_dump_every``, ``-id``, ``-timing``, ``-backend``.
"""

import ml_collections

from densecap_jax import configs as model_configs


def get_config(model_name):
  """Training config around the model config ``model_name``."""
  config = ml_collections.ConfigDict()
  config.model = model_configs.get_model_config(model_name)

  config.data_h5 = "data/VG-regions.h5"
  config.data_json = "data/VG-regions-dicts.json"
  config.debug_max_train_images = -1
  config.per_device_batch_size = 1  # images per accelerator per step (the original: 1)
  config.shuffle = False  # the original reads training images in order
  # Threads assembling the batches (the same batches for any number); 0 = the
  # cores this process may use (os.sched_getaffinity).
  config.num_workers = 0
  # Batches assembled ahead of the step on the host, and placed on the devices ahead of it.
  config.prefetch_batches = 2

  config.learning_rate = 1e-5
  config.lr_schedule = "constant"  # or "cosine" (decays to 0 at max_iters)
  config.warmup_steps = 0
  config.optim_beta1 = 0.9
  config.optim_beta2 = 0.999
  config.optim_epsilon = 1e-8
  config.weight_decay = 1e-6
  config.finetune_cnn_after = -1
  # Not an option of the original: when set, only these top-level modules
  # train (e.g. ("language_model",) fits the captioner to a fixed detector).
  config.trained_modules = ()

  config.max_iters = -1
  config.seed = 123
  config.checkpoint_start_from = ""
  config.save_checkpoint_every = 10000
  config.keep_checkpoints = 3
  config.losses_log_every = 10
  config.max_nonfinite_steps = 10
  config.explode_factor = 100.0

  config.val_images_use = 1000
  config.val_metric = "map"  # "map" (METEOR, needs Java) or "detmap" (boxes only); picks best/
  config.eval_first_iteration = False
  # Not options of the original: {attribute: words} (e.g. {"colour": (...), "shape":
  # (...)}) makes each validation also log, in percent, how often the caption of a
  # matched single object names its attributes right (``evaluation.attribute_accuracy``);
  # {} = off. The joint attributes are those a scored region names exactly once and
  # whose all-right share is logged (() = all).
  config.val_attribute_words = {}
  config.val_attribute_joint = ()
  # The model config's test-time settings under the original's names: one value
  # each (``densecap_jax.settings``); setting either name sets both.
  config.test_rpn_nms_thresh = config.model.get_ref("rpn_nms_thresh")
  config.test_final_nms_thresh = config.model.get_ref("final_nms_thresh")
  config.test_num_proposals = config.model.get_ref("num_proposals")

  # Not options of the original: the region-attribute pretraining that gives a
  # model trained from scratch its start (``python -m densecap_jax.train.pretrain``,
  # ``train/region_pretraining.py``): Adam with a linear warm-up and a cosine
  # decay to 0 at ``steps``, ``batch_size`` images a step, their first
  # ``max_regions`` labelled regions each; ``feature_rms`` > 0 scales relu5_3
  # to that RMS at the end without changing the codes (0: as trained).
  config.pretrain = ml_collections.ConfigDict()
  config.pretrain.steps = 2000
  config.pretrain.batch_size = 8
  config.pretrain.learning_rate = 1e-3
  config.pretrain.warmup_steps = 100
  config.pretrain.max_regions = 8
  config.pretrain.feature_rms = 0.0
  return config
