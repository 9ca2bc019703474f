"""The original's DenseCap checkpoint (``train.lua``'s ``.t7``) -> a densecap_jax model.

``train.lua`` saves ``{opt, iter, loss_history, results_history, model}``
(reference §7.4) with the model cast to float and its cuDNN modules turned
into ``nn`` ones; files saved otherwise (``torch.CudaTensor`` storages,
``cudnn.*`` modules, a bare ``DenseCapModel``) are read as well. The
``DenseCapModel`` keeps its parts in ``model.nets`` (``DenseCapModel.lua``):

* ``conv_net1`` (VGG-16 modules 1–10, conv1_1 … pool2) and ``conv_net2``
  (modules 11–30, conv3_1 … relu5_3) -> ``backbone/conv1_1`` … ``conv5_3``;
* ``localization_layer.nets.rpn``: 3x3 conv, ReLU, box branch (1x1 conv,
  RegularizeLayer, MakeAnchors …) and score branch (1x1 conv …) ->
  ``localization/rpn_conv``, ``rpn_box``, ``rpn_score``;
  ``localization_layer.nets.roi_pooling`` gives the RoI size;
* ``recog_base`` (View, fc6, ReLU, Dropout, fc7, ReLU, Dropout),
  ``objectness_branch`` and ``box_reg_branch`` (Linear) ->
  ``recognition/fc6``, ``fc7``, ``objectness``, ``box_reg``;
* ``language_model``: ``image_encoder`` (Linear, ReLU, View),
  ``lookup_table``, ``rnn`` (torch-rnn LSTM, View, Linear, View) ->
  ``language_model/image_encoder``, ``word_embed``, ``lstm``, ``output_proj``.

Every size of the model config comes from the tensors (conv widths, RPN
filters, anchors and field centres of ``MakeAnchors``, RoI size, fc width,
LSTM sizes, vocabulary), so down-sized models convert as well; loss weights,
sampler settings and ``box_reg_decay`` come from the modules and ``opt``;
the test-time settings keep the ``vgg16`` config's values (those of
``run_model.lua``).
"""

import numpy as np

from densecap_jax.data import vocab as vocab_lib
from densecap_jax.convert import mapping
from densecap_jax.convert import t7

CONV = ("nn.SpatialConvolution", "nn.SpatialConvolutionMM", "cudnn.SpatialConvolution")
RELU = ("nn.ReLU", "cudnn.ReLU")
POOL = ("nn.SpatialMaxPooling", "cudnn.SpatialMaxPooling")
CONTAINERS = ("nn.Sequential", "nn.ConcatTable", "nn.ParallelTable")
RPN_MODULES = CONV + RELU + CONTAINERS + (
    "nn.RegularizeLayer", "nn.MakeAnchors", "nn.ReshapeBoxFeatures", "nn.ApplyBoxTransform",
    "nn.Identity", "nn.FlattenTable")
NUM_BLOCKS = 5  # the model's VGG has four pools between five conv blocks (§2)

# config field <- (which opt table, opt key); the localization layer keeps its own opt.
_OPT_FIELDS = (
    ("mid_box_reg_weight", "localization", "mid_box_reg_weight", float),
    ("mid_objectness_weight", "localization", "mid_objectness_weight", float),
    ("sampler_batch_size", "localization", "sampler_batch_size", int),
    ("sampler_high_thresh", "localization", "sampler_high_thresh", float),
    ("sampler_low_thresh", "localization", "sampler_low_thresh", float),
    ("train_remove_outbounds_boxes", "localization", "train_remove_outbounds_boxes", bool),
    ("end_objectness_weight", "model", "end_objectness_weight", float),
    ("end_box_reg_weight", "model", "end_box_reg_weight", float),
    ("captioning_weight", "model", "captioning_weight", float),
    ("std", "model", "std", float),
)


def module(obj, path, classes):
  """``obj`` checked to be a Torch object of one of ``classes``.

  Raises:
    ValueError: naming ``path``, the class found and the classes expected.
  """
  if not isinstance(obj, t7.TorchObject):
    raise ValueError(f"{path}: expected a module ({', '.join(classes)}), got "
                     f"{type(obj).__name__}")
  if obj.class_name not in classes:
    raise ValueError(f"{path}: unknown module {obj.class_name} (expected "
                     f"{' or '.join(classes)})")
  return obj


def field(obj, name, path):
  """``obj.name``; raises a ValueError naming ``path.name`` when it is missing."""
  value = obj.get(name)
  if value is None:
    raise ValueError(f"{path}: missing field {name!r}")
  return value


def tensor(obj, name, path):
  """``obj.name`` checked to be a tensor (a NumPy array)."""
  value = field(obj, name, path)
  if not isinstance(value, np.ndarray):
    raise ValueError(f"{path}.{name}: expected a tensor, got {type(value).__name__}")
  return value


def children(container, path):
  """``[(child, 'path.modules[i]'), ...]`` of a container module (1-based like Lua)."""
  modules = t7.sequence(field(container, "modules", path), f"{path}.modules")
  return [(child, f"{path}.modules[{i}]") for i, child in enumerate(modules, start=1)]


def walk(container, path, allowed):
  """Depth-first leaf modules of nested containers, each checked against ``allowed``."""
  leaves = []
  for child, child_path in children(container, path):
    module(child, child_path, allowed)
    if child.class_name in CONTAINERS:
      leaves.extend(walk(child, child_path, allowed))
    else:
      leaves.append((child, child_path))
  return leaves


def conv(obj, path, size, pad):
  """``(kernel HWIO, bias, sources)`` of a ``size x size`` stride-1 convolution padded by ``pad``.

  ``nn.SpatialConvolutionMM`` keeps its weight as ``out x (in * kH * kW)``;
  it is reshaped with the module's plane counts.
  """
  weight = tensor(obj, "weight", path)
  if weight.ndim == 2:
    weight = weight.reshape(field(obj, "nOutputPlane", path), field(obj, "nInputPlane", path),
                            field(obj, "kH", path), field(obj, "kW", path))
  geometry = {key: obj.get(key) for key in ("kH", "kW", "dH", "dW", "padH", "padW")}
  want = {"kH": size, "kW": size, "dH": 1, "dW": 1, "padH": pad, "padW": pad}
  wrong = {k: v for k, v in geometry.items() if v is not None and v != want[k]}
  if wrong or obj.get("groups", 1) != 1:
    raise ValueError(f"{path}: the model needs a {size}x{size} convolution with stride 1 and "
                     f"padding {pad}, got {geometry} groups={obj.get('groups', 1)}")
  kernel = mapping.conv_kernel(weight, f"{path}.weight")
  if kernel.shape[:2] != (size, size):
    raise ValueError(f"{path}.weight: expected {size}x{size} kernels, got shape {weight.shape}")
  bias = mapping.vector(tensor(obj, "bias", path), kernel.shape[3], f"{path}.bias")
  return kernel, bias, (f"{path}.weight {tuple(weight.shape)}",
                        f"{path}.bias {tuple(bias.shape)}")


def linear(obj, path):
  """``(kernel in x out, bias, sources)`` of an ``nn.Linear``."""
  module(obj, path, ("nn.Linear",))
  weight = tensor(obj, "weight", path)
  kernel = mapping.linear_kernel(weight, f"{path}.weight")
  bias = mapping.vector(tensor(obj, "bias", path), kernel.shape[1], f"{path}.bias")
  return kernel, bias, (f"{path}.weight {tuple(weight.shape)}",
                        f"{path}.bias {tuple(bias.shape)}")


class _Builder:
  """Collects params and their sources."""

  def __init__(self):
    self.params = {}
    self.sources = {}

  def put(self, name, kernel, bias, sources, kernel_name="kernel"):
    for leaf, value, source in ((kernel_name, kernel, sources[0]), ("bias", bias, sources[1])):
      mapping.set_leaf(self.params, f"{name}/{leaf}", value)
      self.sources[f"{name}/{leaf}"] = source


def backbone(nets, path, out):
  """Maps ``conv_net1`` + ``conv_net2``; returns ``(cnn_widths, frozen_blocks)``.

  Raises:
    ValueError: a module other than conv / ReLU / max-pool, a pool that is not
      2x2 / stride 2 in ceil mode, ``conv_net1`` not ending with a pool, or
      not five conv blocks.
  """
  blocks = [[]]
  frozen_blocks = None
  channels = 3
  for part in ("conv_net1", "conv_net2"):
    part_path = f"{path}.{part}"
    container = module(field(nets, part, path), part_path, ("nn.Sequential",))
    for obj, obj_path in children(container, part_path):
      module(obj, obj_path, CONV + RELU + POOL)
      if obj.class_name in CONV:
        kernel, bias, sources = conv(obj, obj_path, 3, 1)
        if kernel.shape[2] != channels:
          raise ValueError(f"{obj_path}: takes {kernel.shape[2]} channels, the layer before "
                           f"gives {channels}")
        channels = kernel.shape[3]
        blocks[-1].append(channels)
        out.put(f"backbone/conv{len(blocks)}_{len(blocks[-1])}", kernel, bias, sources)
      elif obj.class_name in POOL:
        _check_pool(obj, obj_path)
        blocks.append([])
    if part == "conv_net1":
      if blocks[-1]:
        raise ValueError(f"{part_path} must end with a max-pool (the frozen layers are whole "
                         f"blocks, §2), it ends inside block {len(blocks)}")
      frozen_blocks = len(blocks) - 1
  if len(blocks) != NUM_BLOCKS or not all(blocks):
    raise ValueError(f"{path}.conv_net1/conv_net2: expected {NUM_BLOCKS} conv blocks separated "
                     f"by 4 max-pools (VGG-16 up to relu5_3), got conv widths {blocks}")
  return tuple(tuple(b) for b in blocks), frozen_blocks


def _check_pool(obj, path):
  geometry = {key: obj.get(key) for key in ("kH", "kW", "dH", "dW", "padH", "padW")}
  if geometry != {"kH": 2, "kW": 2, "dH": 2, "dW": 2, "padH": 0, "padW": 0}:
    raise ValueError(f"{path}: the model pools 2x2 with stride 2, got {geometry}")
  if not obj.get("ceil_mode", False):
    raise ValueError(f"{path}: max-pool in floor mode; the model pools in ceil mode (§2)")


def localization(nets, path, out):
  """Maps the RPN; returns config fields (filters, anchors, field centres, RoI size, decay)."""
  layer_path = f"{path}.localization_layer"
  layer = module(field(nets, "localization_layer", path), layer_path, ("nn.LocalizationLayer",))
  layer_nets = field(layer, "nets", layer_path)
  rpn_path = f"{layer_path}.nets.rpn"
  rpn = module(field(layer_nets, "rpn", f"{layer_path}.nets"), rpn_path, ("nn.Sequential",))
  leaves = walk(rpn, rpn_path, RPN_MODULES)
  convs = [(obj, p) for obj, p in leaves if obj.class_name in CONV]
  anchors = [(obj, p) for obj, p in leaves if obj.class_name == "nn.MakeAnchors"]
  decays = [obj for obj, _ in leaves if obj.class_name == "nn.RegularizeLayer"]
  if len(convs) != 3 or len(anchors) != 1:
    raise ValueError(f"{rpn_path}: expected 3 convolutions (hidden, box, score) and one "
                     f"MakeAnchors, found {len(convs)} and {len(anchors)}")
  make_anchors, anchors_path = anchors[0]
  sizes = tensor(make_anchors, "anchors", anchors_path)
  if sizes.ndim != 2 or sizes.shape[0] != 2:
    raise ValueError(f"{anchors_path}.anchors: expected 2 x k (widths, heights), got shape "
                     f"{sizes.shape}")
  k = sizes.shape[1]
  (hidden, hidden_path), (box, box_path), (score, score_path) = convs
  kernel, bias, sources = conv(hidden, hidden_path, 3, 1)
  out.put("localization/rpn_conv", kernel, bias, sources)
  filters = kernel.shape[3]
  for name, obj, obj_path, channels in (("rpn_box", box, box_path, 4 * k),
                                        ("rpn_score", score, score_path, 2 * k)):
    kernel, bias, sources = conv(obj, obj_path, 1, 0)
    if kernel.shape[3] != channels:
      raise ValueError(f"{obj_path}: expected {channels} output channels for {k} anchors, got "
                       f"{kernel.shape[3]}")
    out.put(f"localization/{name}", kernel, bias, sources)
  fields = {
      "rpn_num_filters": filters,
      "anchor_sizes": tuple((float(w), float(h)) for w, h in sizes.T),
      "anchor_scale": 1.0,
      "field_centers": tuple(float(field(make_anchors, key, anchors_path))
                             for key in ("x0", "y0", "sx", "sy")),
  }
  if decays:
    fields["box_reg_decay"] = float(field(decays[0], "w", rpn_path))
  pooling = layer_nets.get("roi_pooling")
  if isinstance(pooling, t7.TorchObject):
    pooling_path = f"{layer_path}.nets.roi_pooling"
    fields["roi_output_size"] = (int(field(pooling, "height", pooling_path)),
                                 int(field(pooling, "width", pooling_path)))
  return fields


def recognition(nets, path, out):
  """Maps fc6 / fc7 and the two heads; returns ``(fc_dim, drop_prob or None)``."""
  base_path = f"{path}.recog_base"
  base = module(field(nets, "recog_base", path), base_path, ("nn.Sequential",))
  layers = walk(base, base_path, ("nn.View", "nn.Linear", "nn.Dropout") + RELU)
  linears = [(obj, p) for obj, p in layers if obj.class_name == "nn.Linear"]
  if len(linears) != 2:
    raise ValueError(f"{base_path}: expected two Linear layers (fc6, fc7), found {len(linears)}")
  for name, (obj, obj_path) in zip(("fc6", "fc7"), linears):
    out.put(f"recognition/{name}", *linear(obj, obj_path))
  fc_dim = out.params["recognition"]["fc7"]["kernel"].shape[1]
  for name, key in (("objectness", "objectness_branch"), ("box_reg", "box_reg_branch")):
    out.put(f"recognition/{name}", *linear(field(nets, key, path), f"{path}.{key}"))
  drops = {float(field(obj, "p", p)) for obj, p in layers if obj.class_name == "nn.Dropout"}
  if len(drops) > 1:
    raise ValueError(f"{base_path}: dropout layers with different p {sorted(drops)}")
  return fc_dim, (drops.pop() if drops else None)


def language_model(nets, path, out):
  """Maps the LM; returns ``(fields, idx_to_token)``."""
  lm_path = f"{path}.language_model"
  lm = module(field(nets, "language_model", path), lm_path, ("nn.LanguageModel",))
  encoder_path = f"{lm_path}.image_encoder"
  encoder = walk(module(field(lm, "image_encoder", lm_path), encoder_path, ("nn.Sequential",)),
                 encoder_path, ("nn.Linear", "nn.View") + RELU)
  encoder = [(obj, p) for obj, p in encoder if obj.class_name == "nn.Linear"]
  if len(encoder) != 1:
    raise ValueError(f"{encoder_path}: expected one Linear layer, found {len(encoder)}")
  out.put("language_model/image_encoder", *linear(*encoder[0]))

  table_path = f"{lm_path}.lookup_table"
  table = module(field(lm, "lookup_table", lm_path), table_path, ("nn.LookupTable",))
  embedding = tensor(table, "weight", table_path)
  if embedding.ndim != 2:
    raise ValueError(f"{table_path}.weight: expected (V + 2) x W, got shape {embedding.shape}")
  mapping.set_leaf(out.params, "language_model/word_embed/embedding",
                   np.ascontiguousarray(embedding, np.float32))
  out.sources["language_model/word_embed/embedding"] = (
      f"{table_path}.weight {tuple(embedding.shape)}")

  rnn_path = f"{lm_path}.rnn"
  rnn = walk(module(field(lm, "rnn", lm_path), rnn_path, ("nn.Sequential",)), rnn_path,
             ("nn.LSTM", "nn.View", "nn.Linear", "nn.Dropout"))
  lstms = [(obj, p) for obj, p in rnn if obj.class_name == "nn.LSTM"]
  projections = [(obj, p) for obj, p in rnn if obj.class_name == "nn.Linear"]
  if len(lstms) != 1 or len(projections) != 1:
    raise ValueError(f"{rnn_path}: the model has one LSTM layer and one output Linear, found "
                     f"{len(lstms)} LSTM and {len(projections)} Linear")
  lstm, lstm_path = lstms[0]
  weight = tensor(lstm, "weight", lstm_path)
  bias = tensor(lstm, "bias", lstm_path)
  hidden = bias.size // 4
  if bias.size % 4 or weight.shape != (weight.shape[0], 4 * hidden) or weight.shape[0] <= hidden:
    raise ValueError(f"{lstm_path}: expected weight (D + H) x 4H and bias 4H, got "
                     f"{weight.shape} and {bias.shape}")
  out.put("language_model/lstm", np.ascontiguousarray(weight, np.float32),
          mapping.vector(bias, 4 * hidden, f"{lstm_path}.bias"),
          (f"{lstm_path}.weight {tuple(weight.shape)}", f"{lstm_path}.bias {tuple(bias.shape)}"),
          kernel_name="weight")
  out.put("language_model/output_proj", *linear(*projections[0]))

  vocab_size = int(field(lm, "vocab_size", lm_path))
  fields = {
      "vocab_size": vocab_size,
      "seq_length": int(field(lm, "seq_length", lm_path)),
      "rnn_size": hidden,
      "rnn_encoding_size": int(embedding.shape[1]),
  }
  return fields, field(lm, "idx_to_token", lm_path)


def find_model(tree):
  """``(model, path)``: the ``DenseCapModel`` of a checkpoint table or the model itself."""
  if isinstance(tree, dict) and "model" in tree:
    return module(tree["model"], "checkpoint.model", ("DenseCapModel",)), "checkpoint.model"
  if isinstance(tree, t7.TorchObject):
    return module(tree, "file", ("DenseCapModel",)), "model"
  raise ValueError("expected a DenseCap checkpoint (a table with 'model') or a DenseCapModel, "
                   f"got {type(tree).__name__}")


def _options(model, model_path, checkpoint):
  """Loss weights and sampler settings from the opt tables."""
  as_table = lambda value: value if isinstance(value, dict) else {}
  model_opt = as_table(model.get("opt")) or as_table(as_table(checkpoint).get("opt"))
  layer = model["nets"].get("localization_layer")
  layer_opt = as_table(layer.get("opt")) if isinstance(layer, t7.TorchObject) else {}
  tables = {"model": model_opt, "localization": layer_opt or model_opt}
  fields = {}
  for key, table, opt_key, kind in _OPT_FIELDS:
    value = tables[table].get(opt_key)
    if value is None:
      continue
    if not isinstance(value, (int, float)) or isinstance(value, bool) and kind is not bool:
      raise ValueError(f"{model_path}.opt.{opt_key}: expected a number, got {value!r}")
    fields[key] = kind(value)
  crits = as_table(model.get("crits"))
  box_crit = crits.get("box_reg_crit")
  if isinstance(box_crit, t7.TorchObject) and isinstance(box_crit.get("w"), (int, float)):
    fields["end_box_reg_weight"] = float(box_crit["w"])
  return fields


def convert(tree):
  """A :class:`mapping.Conversion` of a loaded ``.t7`` DenseCap checkpoint (``t7.load``).

  Raises:
    ValueError: one line naming the module path and the problem: unknown
      modules, layers the model does not have, shape mismatches, a
      vocabulary that disagrees with the LM's sizes.
  """
  model, model_path = find_model(tree)
  nets_path = f"{model_path}.nets"
  nets = field(model, "nets", model_path)
  out = _Builder()
  cnn_widths, frozen_blocks = backbone(nets, nets_path, out)
  fields = localization(nets, nets_path, out)
  fc_dim, drop_prob = recognition(nets, nets_path, out)
  lm_fields, idx_to_token = language_model(nets, nets_path, out)
  fields.update(lm_fields)
  fields.update(_options(model, model_path, tree))
  fields.update(cnn_widths=cnn_widths, frozen_blocks=frozen_blocks, fc_dim=fc_dim)
  if drop_prob is not None:
    fields["drop_prob"] = drop_prob

  if not isinstance(idx_to_token, dict) or not all(isinstance(v, str)
                                                   for v in idx_to_token.values()):
    raise ValueError(f"{nets_path}.language_model.idx_to_token: expected a table of id -> "
                     f"word strings")
  vocab = vocab_lib.vocab_from_idx_to_token(idx_to_token,
                                            f"{nets_path}.language_model.idx_to_token")
  if len(vocab) - 1 != fields["vocab_size"]:
    raise ValueError(f"{nets_path}.language_model: vocab_size {fields['vocab_size']} but "
                     f"idx_to_token has {len(vocab) - 1} words")
  config = mapping.model_config(**fields)
  mapping.check_params(out.params, config)
  notes = [_sizes_note(config)]
  return mapping.Conversion(out.params, config, vocab, out.sources, notes)


def _sizes_note(config):
  sizes = (f"conv widths {[list(b) for b in config.cnn_widths]}, RPN {config.rpn_num_filters} "
           f"filters x {len(config.anchor_sizes)} anchors, fc {config.fc_dim}, LSTM "
           f"{config.rnn_encoding_size}->{config.rnn_size}, V = {config.vocab_size}, "
           f"L = {config.seq_length}")
  if config.name == "vgg16":
    return f"the released model's sizes (config 'vgg16'): {sizes}"
  return f"sizes differ from the released VGG-16 model (config 'custom'): {sizes}"
