"""Files in the original formats for the converter tests, and NumPy references of Torch's layers.

* :func:`densecap_checkpoint` builds the value tree ``train.lua`` saves
  (``{opt, iter, loss_history, results_history, model}``) around a
  down-sized ``DenseCapModel`` with the original's module tree and the
  fields each module serialises (``nn`` / ``cudnn`` classes, torch-rnn LSTM,
  nngraph recognition gModule, shared flat parameter storages as after
  ``getParameters()``), with random weights returned in Torch layout too.
* :func:`caffemodel_bytes` writes a Caffe ``NetParameter`` with a minimal
  protobuf encoder (V1 ``layers`` or V2 ``layer`` messages).
* :func:`pth_zip_bytes` / :func:`pth_legacy_bytes` write a PyTorch state dict
  the way ``torch.save`` lays it out (zip + pickle, or the pre-1.6 stream),
  with the standard library only.
* ``torch_*`` functions: NumPy references of Torch's semantics (NCHW
  cross-correlation, ceil-mode max-pool, ``nn.Linear``, torch-rnn LSTM).
"""

import collections
import io
import pickle
import struct
import zipfile

import numpy as np

from densecap_jax.convert import t7

VGG_ANCHORS = ((45, 90), (90, 45), (64, 64), (90, 180), (180, 90), (128, 128), (181, 362),
               (362, 181), (256, 256), (362, 724), (724, 362), (512, 512))
SMALL_WIDTHS = ((4, 4), (6, 6), (8, 8, 8), (8, 8, 8), (10, 10, 10))


# --------------------------------------------------------------------------
# NumPy references of Torch's layers (NCHW, Torch weight layouts).


def torch_conv(x, weight, bias, pad):
  """``nn.SpatialConvolution`` (stride 1): ``(C, H, W)`` -> ``(O, H', W')``, cross-correlation."""
  c, h, w = x.shape
  out, _, kh, kw = weight.shape
  xp = np.zeros((c, h + 2 * pad, w + 2 * pad), np.float64)
  xp[:, pad:pad + h, pad:pad + w] = x
  oh, ow = h + 2 * pad - kh + 1, w + 2 * pad - kw + 1
  y = np.zeros((out, oh, ow), np.float64)
  for i in range(kh):
    for j in range(kw):
      patch = xp[:, i:i + oh, j:j + ow]
      y += np.einsum("oc,chw->ohw", weight[:, :, i, j].astype(np.float64), patch)
  return y + bias[:, None, None]


def torch_max_pool_ceil(x):
  """``nn.SpatialMaxPooling(2, 2, 2, 2):ceil()``: an odd side's last window covers one pixel."""
  c, h, w = x.shape
  oh, ow = -(-h // 2), -(-w // 2)
  y = np.full((c, oh, ow), -np.inf)
  for i in range(oh):
    for j in range(ow):
      y[:, i, j] = x[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].max(axis=(1, 2))
  return y


def torch_linear(x, weight, bias):
  """``nn.Linear``: ``x W^T + b`` with ``weight`` ``out x in``."""
  return x.astype(np.float64) @ weight.T.astype(np.float64) + bias


def torch_rnn_lstm_step(x, h, c, weight, bias):
  """One torch-rnn ``nn.LSTM`` step: weight ``(D + H) x 4H``, gates i, f, o, g."""
  hidden = h.shape[-1]
  a = np.concatenate([x, h], axis=-1) @ weight.astype(np.float64) + bias
  sigmoid = lambda v: 1 / (1 + np.exp(-v))
  i, f, o = (sigmoid(a[..., k * hidden:(k + 1) * hidden]) for k in range(3))
  g = np.tanh(a[..., 3 * hidden:])
  c = f * c + i * g
  return o * np.tanh(c), c


def torch_vgg(image_chw, convs):
  """conv1_1 … relu5_3 of ``convs`` (blocks of ``(weight, bias)``), ceil-mode pools between."""
  x = image_chw.astype(np.float64)
  for block, layers in enumerate(convs):
    for weight, bias in layers:
      x = np.maximum(torch_conv(x, weight, bias, 1), 0)
    if block < len(convs) - 1:
      x = torch_max_pool_ceil(x)
  return x


# --------------------------------------------------------------------------
# The DenseCap checkpoint (Torch7).


class _ParamPool:
  """Parameters that share one flat storage (``getParameters()``), offsets in insertion order."""

  def __init__(self, class_name):
    self.class_name = class_name
    self.tensors = []

  def tensor(self, array):
    array = np.asarray(array, np.float32)
    strides = tuple(int(np.prod(array.shape[i + 1:])) for i in range(array.ndim))
    offset = sum(int(np.prod(a.shape)) for _, a in self.tensors)
    tensor = t7.Tensor(None, offset, array.shape, strides, self.class_name)
    self.tensors.append((tensor, array))
    return tensor

  def finish(self):
    """Allocates the storage (a few elements longer than its tensors, as Torch's can be)."""
    flat = np.concatenate([a.reshape(-1) for _, a in self.tensors] + [np.zeros(3, np.float32)])
    for tensor, _ in self.tensors:
      tensor.storage = flat


class _Modules:
  """Builds ``nn`` / ``cudnn`` modules with the fields Torch serialises."""

  def __init__(self, tensor_class, params, grads):
    self.tensor_class = tensor_class
    self.params = params
    self.grads = grads

  def empty(self):
    return t7.Tensor(None, 0, (), (), self.tensor_class)

  def obj(self, class_name, **fields):
    base = {"output": self.empty(), "gradInput": self.empty(), "train": False,
            "_type": self.tensor_class}
    base.update(fields)
    return t7.TorchObject(class_name, base)

  def container(self, class_name, modules):
    return self.obj(class_name, modules=list(modules))

  def conv(self, class_name, weight, bias, pad, params=None):
    params = params or self.params
    out, inp, kh, kw = weight.shape
    fields = dict(nInputPlane=inp, nOutputPlane=out, kW=kw, kH=kh, dW=1, dH=1, padW=pad,
                  padH=pad, bias=params.tensor(bias), gradBias=self.grads.tensor(bias * 0))
    if class_name == "nn.SpatialConvolutionMM":
      fields.update(weight=params.tensor(weight.reshape(out, -1)),
                    gradWeight=self.grads.tensor(weight.reshape(out, -1) * 0),
                    finput=self.empty(), fgradInput=self.empty())
    else:
      fields.update(weight=params.tensor(weight), gradWeight=self.grads.tensor(weight * 0))
    if class_name.startswith("cudnn."):
      fields.update(groups=1, iSize=t7.Storage(np.zeros(4, np.int64), "torch.LongStorage"))
    return self.obj(class_name, **fields)

  def relu(self, cudnn):
    if cudnn:
      return self.obj("cudnn.ReLU", inplace=True)
    return self.obj("nn.ReLU", threshold=0, val=0, inplace=True)

  def pool(self, cudnn):
    fields = dict(kW=2, kH=2, dW=2, dH=2, padW=0, padH=0, ceil_mode=True)
    if not cudnn:
      fields["indices"] = t7.Tensor(None, 0, (), (), "torch.FloatTensor")
    return self.obj("cudnn.SpatialMaxPooling" if cudnn else "nn.SpatialMaxPooling", **fields)

  def linear(self, weight, bias, params=None):
    params = params or self.params
    return self.obj("nn.Linear", weight=params.tensor(weight), bias=params.tensor(bias),
                    gradWeight=self.grads.tensor(weight * 0), gradBias=self.grads.tensor(bias * 0))

  def view(self, *sizes, num_input_dims=None):
    fields = dict(size=t7.Storage(np.asarray(sizes, np.int64), "torch.LongStorage"),
                  numElements=-1)
    if num_input_dims is not None:
      fields["numInputDims"] = num_input_dims
    return self.obj("nn.View", **fields)

  def dropout(self, p):
    return self.obj("nn.Dropout", p=p, noise=self.empty(), v2=True, inplace=False)


def _random_weights(rng, widths, rpn_filters, num_anchors, fc_dim, roi, encoding, rnn_size,
                    vocab_size):
  """Torch-layout weights of a DenseCap model; He-scaled so activations stay O(1)."""
  def normal(shape, fan_in):
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

  def small(shape):
    return (rng.standard_normal(shape) * 0.1).astype(np.float32)

  convs, channels = [], 3
  for block in widths:
    layers = []
    for width in block:
      layers.append((normal((width, channels, 3, 3), 9 * channels), small((width,))))
      channels = width
    convs.append(layers)
  fc_in = channels * roi[0] * roi[1]
  hidden = rnn_size
  return {
      "convs": convs,
      "rpn_conv": (normal((rpn_filters, channels, 3, 3), 9 * channels), small((rpn_filters,))),
      "rpn_box": (small((4 * num_anchors, rpn_filters, 1, 1)), small((4 * num_anchors,))),
      "rpn_score": (normal((2 * num_anchors, rpn_filters, 1, 1), rpn_filters),
                    small((2 * num_anchors,))),
      "fc6": (normal((fc_dim, fc_in), fc_in), small((fc_dim,))),
      "fc7": (normal((fc_dim, fc_dim), fc_dim), small((fc_dim,))),
      "objectness": (normal((1, fc_dim), fc_dim), small((1,))),
      "box_reg": (small((4, fc_dim)), small((4,))),
      "image_encoder": (normal((encoding, fc_dim), fc_dim), small((encoding,))),
      "lookup": rng.standard_normal((vocab_size + 2, encoding)).astype(np.float32),
      "lstm": (normal((encoding + hidden, 4 * hidden), encoding + hidden),
               small((4 * hidden,))),
      "output_proj": (normal((vocab_size + 1, hidden), hidden), small((vocab_size + 1,))),
  }


def _train_opts(vocab, seq_length, rnn_size, encoding, anchor_scale):
  """The ``opt`` table: train_opts.lua options plus what the model constructors add (§7.2)."""
  return {
      "backend": "cudnn", "rpn_hidden_dim": 512, "sampler_batch_size": 256,
      "rnn_size": rnn_size, "input_encoding_size": 512, "sampler_high_thresh": 0.7,
      "sampler_low_thresh": 0.3, "train_remove_outbounds_boxes": 1,
      "mid_box_reg_weight": 0.05, "mid_objectness_weight": 0.1, "end_box_reg_weight": 0.1,
      "end_objectness_weight": 0.1, "captioning_weight": 1, "weight_decay": 1e-6,
      "box_reg_decay": 5e-5, "data_h5": "data/VG-regions.h5",
      "data_json": "data/VG-regions-dicts.json", "proposal_regions_h5": "",
      "debug_max_train_images": -1, "learning_rate": 1e-5, "optim_beta1": 0.9,
      "optim_beta2": 0.999, "optim_epsilon": 1e-8, "drop_prob": 0.5, "max_iters": -1,
      "checkpoint_start_from": "", "finetune_cnn_after": -1, "val_images_use": 1000,
      "save_checkpoint_every": 10000, "checkpoint_path": "checkpoint.t7",
      "test_rpn_nms_thresh": 0.7, "test_final_nms_thresh": 0.3, "test_num_proposals": 1000,
      "progress_dump_every": 100, "losses_log_every": 10, "id": "", "seed": 123, "gpu": 0,
      "timing": False, "clip_final_boxes": 1, "eval_first_iteration": 0,
      "seq_length": seq_length, "vocab_size": len(vocab),
      "idx_to_token": {i + 1: word for i, word in enumerate(vocab)},
      "cnn_name": "vgg-16", "path_offset": "", "dtype": "torch.CudaTensor", "std": 0.01,
      "final_nms_thresh": 0.3, "rnn_encoding_size": encoding, "input_dim": 0,
      "output_height": 7, "output_width": 7, "field_centers": [8.5, 8.5, 16, 16],
      "rpn_filter_size": 3, "rpn_num_filters": 256, "zero_box_conv": True,
      "anchor_scale": anchor_scale,
  }


def _graph_module(m, modules, names):
  """An nngraph ``gModule`` over ``modules``: nodes with ``mapindex`` tables keyed by tables."""
  datas = [{"module": mod, "annotations": {"name": name}, "mapindex": {}, "forwardNodeId": i}
           for i, (mod, name) in enumerate(zip(modules, names), start=1)]
  nodes = [t7.TorchObject("nngraph.Node", {"data": d, "children": [], "visited": False,
                                           "id": i}) for i, d in enumerate(datas, start=1)]
  for parent, child in zip(nodes, nodes[1:]):
    parent["children"].append(child)
    child["data"]["mapindex"][1] = parent["data"]
    child["data"]["mapindex"][t7.Ref(parent["data"])] = 1
  edges = [t7.TorchObject("graph.Edge", {"from": a, "to": b}) for a, b in zip(nodes, nodes[1:])]
  graph = t7.TorchObject("graph.Graph", {"nodes": nodes, "edges": edges})
  return m.obj("nn.gModule", modules=list(modules), forwardnodes=nodes, fg=graph,
               innode=nodes[0], outnode=nodes[-1], nInputs=4, verbose=False,
               name="recognition_network")


def densecap_checkpoint(seed=0, *, widths=SMALL_WIDTHS, rpn_filters=8, anchor_scale=0.25,
                        fc_dim=24, roi=(7, 7), encoding=12, rnn_size=10,
                        vocab=("a", "man", "red", "shirt", "on", "<UNK>", "table"),
                        seq_length=5, cudnn=True, cuda=False, conv_net1_class=None,
                        opt_overrides=None):
  """The ``train.lua`` checkpoint tree of a down-sized DenseCap model, and its Torch-layout weights.

  Args:
    seed: NumPy seed of the random weights.
    widths: conv widths per VGG block (five blocks).
    rpn_filters, anchor_scale, fc_dim, roi, encoding, rnn_size: model sizes
      (the 12 VGG anchors times ``anchor_scale``).
    vocab: the words, ids ``1..V``.
    seq_length: L.
    cudnn: ``cudnn.*`` convolutions, ReLUs and pools (else ``nn.*``).
    cuda: every tensor a ``torch.CudaTensor`` (else ``torch.FloatTensor``).
    conv_net1_class: convolution class of conv_net1 (e.g. ``nn.SpatialConvolutionMM``).
    opt_overrides: values replacing train options in ``opt`` (and in the
      modules that copy them: RegularizeLayer ``w``, Dropout ``p``,
      BoxRegressionCriterion ``w``).

  Returns:
    ``(tree, weights)``: the value tree for ``t7.save`` and a dict of the
    weights in Torch layout (``weights['convs'][block][i] = (OIHW, bias)``,
    ``'rpn_conv'``, ``'fc6'``, ``'lstm'`` = ``((D+H) x 4H, 4H)``, ``'lookup'`` …)
    plus ``'anchors'`` ``(k, 2)`` and ``'vocab'``.
  """
  rng = np.random.default_rng(seed)
  tensor_class = "torch.CudaTensor" if cuda else "torch.FloatTensor"
  anchors = np.asarray(VGG_ANCHORS, np.float32) * anchor_scale
  weights = _random_weights(rng, widths, rpn_filters, len(anchors), fc_dim, roi, encoding,
                            rnn_size, len(vocab))
  weights["anchors"] = anchors
  weights["vocab"] = list(vocab)
  cnn_params, params, grads = (_ParamPool(tensor_class) for _ in range(3))
  m = _Modules(tensor_class, params, grads)
  conv_class = "cudnn.SpatialConvolution" if cudnn else "nn.SpatialConvolution"

  layers, own_pools = [], []
  for block, convs in enumerate(weights["convs"]):
    for weight, bias in convs:
      if block < 2:  # conv_net1 is outside getParameters(): one storage per module
        own_pools.append(_ParamPool(tensor_class))
        layers.append(m.conv(conv_net1_class or conv_class, weight, bias, 1,
                             params=own_pools[-1]))
      else:
        layers.append(m.conv(conv_class, weight, bias, 1, params=cnn_params))
      layers.append(m.relu(cudnn))
    if block < len(widths) - 1:
      layers.append(m.pool(cudnn))
  split = [i for i, layer in enumerate(layers) if "Pooling" in layer.class_name][1] + 1
  conv_net1 = m.container("nn.Sequential", layers[:split])
  conv_net2 = m.container("nn.Sequential", layers[split:])

  opt = _train_opts(vocab, seq_length, rnn_size, encoding, anchor_scale)
  opt.update(opt_overrides or {})
  k = len(anchors)
  make_anchors = m.obj("nn.MakeAnchors", x0=8.5, y0=8.5, sx=16, sy=16,
                       anchors=np.ascontiguousarray(anchors.T))
  box_branch = m.container("nn.Sequential", [
      m.conv(conv_class, *weights["rpn_box"], 0),
      m.obj("nn.RegularizeLayer", w=opt["box_reg_decay"], gradMul=1),
      m.container("nn.ConcatTable", [
          m.container("nn.Sequential", [make_anchors,
                                        m.obj("nn.ReshapeBoxFeatures", k=k)]),
          m.obj("nn.ReshapeBoxFeatures", k=k)]),
      m.container("nn.ConcatTable", [m.obj("nn.ApplyBoxTransform"), m.obj("nn.Identity")]),
  ])
  score_branch = m.container("nn.Sequential", [m.conv(conv_class, *weights["rpn_score"], 0),
                                               m.obj("nn.ReshapeBoxFeatures", k=k)])
  rpn = m.container("nn.Sequential", [
      m.conv(conv_class, *weights["rpn_conv"], 1), m.relu(cudnn),
      m.container("nn.ConcatTable", [box_branch, score_branch]), m.obj("nn.FlattenTable")])
  box_to_affine = m.obj("nn.BoxToAffine")
  roi_pooling = m.obj("nn.BilinearRoiPooling", height=roi[0], width=roi[1],
                      box_to_affine=box_to_affine,
                      net=m.container("nn.Sequential", [
                          m.container("nn.ParallelTable", [m.obj("nn.Identity"), box_to_affine]),
                          m.obj("nn.BatchBilinearSamplerBHWD"),
                          m.obj("nn.Transpose", permutations=[[3, 4], [2, 3]])]))
  localization_layer = m.obj(
      "nn.LocalizationLayer", opt=opt, nets={
          "rpn": rpn, "roi_pooling": roi_pooling,
          "box_sampler_helper": m.obj("nn.BoxSamplerHelper", box_sampler=m.obj(
              "nn.BoxSampler", batch_size=256, low_thresh=0.3, high_thresh=0.7)),
          "invert_box_transform": m.obj("nn.InvertBoxTransform"),
          "obj_crit_pos": m.obj("nn.OurCrossEntropyCriterion"),
          "obj_crit_neg": m.obj("nn.OurCrossEntropyCriterion"),
          "box_reg_crit": m.obj("nn.SmoothL1Criterion", sizeAverage=True)},
      losses={}, stats={"losses": {}, "times": {}, "vars": {}}, timing=False, dump_vars=False,
      test_clip_boxes=True, test_nms_thresh=0.7, test_max_proposals=1000,
      roi_boxes=m.empty(), pos_labels=m.empty(), neg_labels=m.empty(),
      pos_trans_targets=m.empty(), image_width=720, image_height=540)

  recog_base = m.container("nn.Sequential", [
      m.view(-1, num_input_dims=3), m.linear(*weights["fc6"]), m.relu(False),
      m.dropout(opt["drop_prob"]), m.linear(*weights["fc7"]), m.relu(False),
      m.dropout(opt["drop_prob"])])
  objectness_branch = m.linear(*weights["objectness"])
  box_reg_branch = m.linear(*weights["box_reg"])

  lstm_weight, lstm_bias = weights["lstm"]
  lstm = m.obj("nn.LSTM", input_dim=encoding, hidden_dim=rnn_size,
               weight=params.tensor(lstm_weight), bias=params.tensor(lstm_bias),
               gradWeight=grads.tensor(lstm_weight * 0), gradBias=grads.tensor(lstm_bias * 0),
               cell=m.empty(), gates=m.empty(), buffer1=m.empty(), buffer2=m.empty(),
               buffer3=m.empty(), grad_a_buffer=m.empty(), h0=m.empty(), c0=m.empty(),
               remember_states=False, grad_c0=m.empty(), grad_h0=m.empty(), grad_x=m.empty())
  image_encoder = m.container("nn.Sequential", [m.linear(*weights["image_encoder"]),
                                                m.relu(False), m.view(1, -1, num_input_dims=1)])
  lookup_table = m.obj("nn.LookupTable", weight=params.tensor(weights["lookup"]),
                       gradWeight=grads.tensor(weights["lookup"] * 0), paddingValue=0,
                       shouldScaleGradByFreq=False, _count=m.empty(), _input=m.empty())
  view_in, view_out = m.view(1, 1, -1, num_input_dims=3), m.view(1, -1, num_input_dims=2)
  rnn = m.container("nn.Sequential", [lstm, view_in, m.linear(*weights["output_proj"]),
                                      view_out])
  language_model = m.obj(
      "nn.LanguageModel", vocab_size=len(vocab), input_encoding_size=encoding,
      image_vector_dim=fc_dim, rnn_size=rnn_size, seq_length=seq_length, num_layers=1,
      idx_to_token=opt["idx_to_token"], dropout=0, image_encoder=image_encoder,
      START_TOKEN=len(vocab) + 1, END_TOKEN=len(vocab) + 1, NULL_TOKEN=len(vocab) + 2,
      lookup_table=lookup_table, sample_argmax=True, rnn=rnn, view_in=view_in,
      view_out=view_out, net=m.container("nn.Sequential", [
          m.container("nn.ParallelTable", [image_encoder, lookup_table]),
          m.obj("nn.JoinTable", dimension=1, nInputDims=2), rnn]))
  recog_net = _graph_module(m, [recog_base, objectness_branch, m.obj("nn.PosSlicer"),
                                box_reg_branch, m.obj("nn.ApplyBoxTransform"), language_model],
                            ["recog_base", "objectness_branch", "code_slicer", "box_reg_branch",
                             "apply_box_transform", "language_model"])
  nets = {"conv_net1": conv_net1, "conv_net2": conv_net2,
          "localization_layer": localization_layer, "recog_base": recog_base,
          "objectness_branch": objectness_branch, "box_reg_branch": box_reg_branch,
          "language_model": language_model, "recog_net": recog_net}
  model = m.obj("DenseCapModel", opt=opt, nets=nets, finetune_cnn=False, crits={
      "objectness_crit": m.obj("nn.LogisticCriterion"),
      "box_reg_crit": m.obj("nn.BoxRegressionCriterion", w=opt["end_box_reg_weight"]),
      "lm_crit": m.obj("nn.TemporalCrossEntropyCriterion")},
      net=m.container("nn.Sequential", [conv_net1, conv_net2, localization_layer, recog_net]))
  for pool in own_pools + [cnn_params, params, grads]:
    pool.finish()
  checkpoint = {"opt": opt, "iter": 420000,
                "loss_history": {10: {"captioning_loss": 40.5, "total_loss": 41.2}},
                "results_history": {10000: {"ap_results": {"map": 0.057}}}, "model": model}
  return checkpoint, weights


# --------------------------------------------------------------------------
# Caffe .caffemodel (protobuf wire format).


def _varint(value):
  out = bytearray()
  value &= (1 << 64) - 1
  while True:
    byte = value & 0x7F
    value >>= 7
    if value:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


def _key(field, wire):
  return _varint(field << 3 | wire)


def _bytes_field(field, data):
  return _key(field, 2) + _varint(len(data)) + data


def _int_field(field, value):
  return _key(field, 0) + _varint(value)


def blob_proto(array, legacy_dims, packed=True):
  """A ``BlobProto``: 4-D ``num/channels/height/width`` when ``legacy_dims``, else ``shape``."""
  array = np.asarray(array, np.float32)
  if legacy_dims:
    dims = (1,) * (4 - array.ndim) + array.shape
    out = b"".join(_int_field(f, d) for f, d in zip((1, 2, 3, 4), dims))
  else:
    out = _bytes_field(7, _bytes_field(1, b"".join(_varint(d) for d in array.shape)))
  if packed:
    out += _bytes_field(5, array.astype("<f4").tobytes())
  else:
    out += b"".join(_key(5, 5) + struct.pack("<f", v) for v in array.reshape(-1))
  return out


def caffemodel_bytes(layers, version=2, name="VGG_ILSVRC_16_layers"):
  """A ``NetParameter`` of ``layers`` = ``[(name, type, [blob arrays])]``.

  ``version`` 2 writes ``layer`` (field 100) messages with string types
  (``'Convolution'``, ``'InnerProduct'``, ``'ReLU'``, ``'Pooling'``); 1 writes
  ``layers`` (field 2) with the V1 enum types and 4-D legacy blob dims, as
  the 2014 VGG-16 release.
  """
  v1_types = {"Convolution": 4, "InnerProduct": 14, "ReLU": 18, "Pooling": 17, "Dropout": 6,
              "Softmax": 20, "Data": 5}
  out = _bytes_field(1, name.encode())
  for layer_name, layer_type, blobs in layers:
    if version == 2:
      body = _bytes_field(1, layer_name.encode()) + _bytes_field(2, layer_type.encode())
      body += b"".join(_bytes_field(7, blob_proto(b, legacy_dims=False)) for b in blobs)
      out += _bytes_field(100, body)
    else:
      body = _bytes_field(4, layer_name.encode()) + _int_field(5, v1_types[layer_type])
      body += b"".join(_bytes_field(6, blob_proto(b, legacy_dims=True, packed=i == 0))
                       for i, b in enumerate(blobs))
      out += _bytes_field(2, body)
  return out


def vgg_caffe_layers(convs, fc6, fc7, fc8):
  """``caffemodel_bytes`` layers of a VGG net: convs per block, ReLUs, pools, fc6–fc8."""
  layers = [("data", "Data", [])]
  for block, block_convs in enumerate(convs, start=1):
    for index, (weight, bias) in enumerate(block_convs, start=1):
      layers.append((f"conv{block}_{index}", "Convolution", [weight, bias]))
      layers.append((f"relu{block}_{index}", "ReLU", []))
    layers.append((f"pool{block}", "Pooling", []))
  for name, (weight, bias) in (("fc6", fc6), ("fc7", fc7), ("fc8", fc8)):
    layers.append((name, "InnerProduct", [weight, bias]))
    if name != "fc8":
      layers += [(f"relu{name[2:]}", "ReLU", []), (f"drop{name[2:]}", "Dropout", [])]
  layers.append(("prob", "Softmax", []))
  return layers


# --------------------------------------------------------------------------
# PyTorch .pth (torch.save layouts), written with the standard pickler.


class _TorchGlobal:
  """Pickled as the opcode ``GLOBAL module name``, without importing ``module``."""

  def __init__(self, module, name):
    self.module, self.name = module, name


class _StorageRef:
  """A storage, pickled as torch's persistent id ``('storage', torch.FloatStorage, key, ...)``."""

  def __init__(self, key, array):
    self.key, self.array = key, array


class _TensorRecord:
  """A tensor, pickled as ``torch._utils.<rebuild>(storage, offset, size, stride, ...)``."""

  def __init__(self, storage_key, array, rebuild="_rebuild_tensor_v2"):
    self.storage = _StorageRef(storage_key, np.asarray(array, np.float32))
    self.rebuild = rebuild


class _TorchPickler(pickle._Pickler):  # pylint: disable=protected-access
  """Pure-Python pickler writing tensors and storages as ``torch.save`` does (protocol 2)."""

  def __init__(self, file, legacy):
    super().__init__(file, protocol=2)
    self.legacy = legacy
    self.storages = {}

  def persistent_id(self, obj):
    if not isinstance(obj, _StorageRef):
      return None
    self.storages[obj.key] = obj.array
    pid = ("storage", _TorchGlobal("torch", "FloatStorage"), obj.key, "cpu", int(obj.array.size))
    return pid + (None,) if self.legacy else pid

  def save(self, obj, save_persistent_id=True):
    if isinstance(obj, _TorchGlobal):
      self.write(b"c" + obj.module.encode() + b"\n" + obj.name.encode() + b"\n")
    elif isinstance(obj, _TensorRecord):
      array = obj.storage.array
      args = (obj.storage, 0, array.shape, tuple(s // array.itemsize for s in array.strides))
      if obj.rebuild == "_rebuild_tensor_v2":
        args += (False, collections.OrderedDict())
      self.save(_TorchGlobal("torch._utils", obj.rebuild))
      self.save(args)
      self.write(pickle.REDUCE)
    else:
      super().save(obj, save_persistent_id)


def _torch_pickle(obj, legacy):
  out = io.BytesIO()
  pickler = _TorchPickler(out, legacy)
  pickler.dump(obj)
  return out.getvalue(), pickler.storages


def state_dict(arrays, rebuild="_rebuild_tensor_v2"):
  """A torch state dict of ``arrays`` (name -> array): one storage per tensor, keys '0', '1', …"""
  result = collections.OrderedDict(
      (name, _TensorRecord(str(i), a, rebuild)) for i, (name, a) in enumerate(arrays.items()))
  # pylint: disable-next=protected-access
  result._metadata = collections.OrderedDict([("", {"version": 1})])
  return result


def pth_zip_bytes(obj, archive="vgg16-397923af"):
  """``torch.save(obj)`` (zip layout): ``archive/data.pkl``, ``archive/data/<key>``, ``version``."""
  data, storages = _torch_pickle(obj, legacy=False)
  out = io.BytesIO()
  with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
    zf.writestr(f"{archive}/data.pkl", data)
    zf.writestr(f"{archive}/byteorder", "little")
    for key, array in storages.items():
      zf.writestr(f"{archive}/data/{key}", np.ascontiguousarray(array, "<f4").tobytes())
    zf.writestr(f"{archive}/version", "3\n")
  return out.getvalue()


def pth_legacy_bytes(obj):
  """``torch.save(obj, _use_new_zipfile_serialization=False)``: pickles, then raw storages."""
  data, storages = _torch_pickle(obj, legacy=True)
  out = io.BytesIO()
  for header in (0x1950A86A20F9469CFC6C, 1001,
                 {"protocol_version": 1001, "little_endian": True,
                  "type_sizes": {"short": 2, "int": 4, "long": 8}}):
    pickle.dump(header, out, protocol=2)
  out.write(data)
  keys = sorted(storages)
  pickle.dump(keys, out, protocol=2)
  for key in keys:
    array = np.ascontiguousarray(storages[key], "<f4")
    out.write(struct.pack("<q", array.size))
    out.write(array.tobytes())
  return out.getvalue()


class _Exploit:
  """Pickles as ``os.system(command)``: what a malicious ``.pth`` does."""

  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    import os  # pylint: disable=g-import-not-at-top
    return os.system, (self.command,)


def malicious_pickle(command):
  """Pickle bytes that run ``command`` through ``os.system`` when unpickled without restriction."""
  return pickle.dumps(collections.OrderedDict([("features.0.weight", _Exploit(command))]),
                      protocol=2)
