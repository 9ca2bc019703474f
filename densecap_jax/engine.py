"""Running a model on devices: the mesh, parameters placed, batches split over the devices.

Two ways of running, one batch axis (:data:`BATCH_AXIS`):

* Test time (prediction, regions, features, the server) is a :class:`Runner`:
  params replicated on a mesh of :attr:`Runner.devices`, each batch split over
  them when it divides evenly (:meth:`Runner.put_batch`), model functions
  compiled with ``jax.jit`` for that placement (:meth:`Runner.jit`), batches of
  prepared images padded to a shape bucket and placed (:meth:`Runner.batches`).
* Training and evaluating a split are ``jax.pmap`` ed over every local
  device: :func:`replicate`, :func:`unreplicate`, :func:`prefetch_to_devices`
  and, with several processes, :func:`gather_processes` and
  :func:`share_from_chief`.
"""

import collections
import copy
import json

import jax
from jax.experimental import multihost_utils
import numpy as np

from densecap_jax import configs
from densecap_jax.configs import buckets as buckets_lib
from densecap_jax.data import device_resize
from densecap_jax.data import image_stream
from densecap_jax.models import precision as precision_lib

# The mesh axis a batch is split over, and the pmap axis of training and evaluation.
BATCH_AXIS = "batch"


def default_devices():
  """The devices a model runs on by default: every local accelerator, or one CPU device.

  Batches are split over several GPUs or TPU cores; on a CPU the forced host
  devices share the same cores, so one device does the same work with less
  padding.
  """
  devices = jax.local_devices()
  return devices if devices[0].platform != "cpu" else devices[:1]


def inference_params(params, config, precision=None):
  """A model's params and config for test time under ``precision``.

  Args:
    params: the ``'params'`` collection (float32 leaves).
    config: the model config.
    precision: a ``models.precision`` name overriding the config's, or ``None``
      (the config's; float32 when it has none).

  Returns:
    ``(params, config)``: the kernels that the precision rounds to bfloat16
    cast once (``precision_lib.cast_for_inference``), the config with the
    precision set.
  """
  config = configs.with_precision(config, precision)
  return precision_lib.cast_for_inference(params, configs.precision_of(config)), config


class Runner:
  """A model on devices with its test-time settings.

  Attributes:
    params: the params, replicated on every device of the mesh.
    config: the model config.
    devices: the devices of the mesh (default :func:`default_devices`).
    mesh: ``jax.sharding.Mesh`` of ``devices`` along :data:`BATCH_AXIS`.
    batch_size: images per forward pass, a multiple of the devices.
    image_size, num_proposals, rpn_nms_thresh, final_nms_thresh: test-time
      settings (defaults from the config).
    buckets: the ``(Hb, Wb)`` shape buckets images are padded to (the
      config's, or made for ``image_size`` when it differs).
  """

  def __init__(self, params, config, *, devices=None, batch_size=1, image_size=None,
               num_proposals=None, rpn_nms_thresh=None, final_nms_thresh=None):
    if batch_size < 1:
      raise ValueError(f"batch_size must be positive, got {batch_size}")
    self.devices = list(devices) if devices is not None else default_devices()
    self.mesh = jax.sharding.Mesh(np.array(self.devices), (BATCH_AXIS,))
    self._replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
    self._split = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(BATCH_AXIS))
    self.params = jax.device_put(params, self._replicated)
    self.config = config
    self.image_size = int(image_size or config.image_size)
    self.num_proposals = int(num_proposals or config.num_proposals)
    self.rpn_nms_thresh = config.rpn_nms_thresh if rpn_nms_thresh is None else rpn_nms_thresh
    self.final_nms_thresh = (config.final_nms_thresh if final_nms_thresh is None
                             else final_nms_thresh)
    num_devices = len(self.devices)
    self.batch_size = -(-batch_size // num_devices) * num_devices  # a multiple of the devices
    if self.image_size == config.image_size:
      self.buckets = tuple(tuple(int(v) for v in b) for b in config.buckets)
    else:
      self.buckets = buckets_lib.make_buckets(self.image_size)

  def replace(self, **changes):
    """A shallow copy with other attribute values (e.g. ``batch_size``, ``final_nms_thresh``).

    The copy shares the params and the functions compiled by :meth:`jit`; the
    values are set as given (``batch_size`` is not rounded).
    """
    runner = copy.copy(self)
    for name, value in changes.items():
      if not hasattr(runner, name):
        raise AttributeError(f"Runner has no attribute {name!r}")
      setattr(runner, name, value)
    return runner

  def splits(self, batch_size):
    """Whether a batch of ``batch_size`` images is split over the devices (else replicated)."""
    return batch_size % len(self.devices) == 0

  def groups(self, batch_size):
    """Device groups a batch of ``batch_size`` is split into: :attr:`devices` or 1."""
    return len(self.devices) if self.splits(batch_size) else 1

  def put_batch(self, *arrays):
    """Batch arrays (leading axis: images) placed for the model: split over :attr:`devices`.

    A batch that does not divide evenly goes to every device whole.
    """
    return tuple(jax.device_put(a, self._split if self.splits(len(a)) else self._replicated)
                 for a in arrays)

  def jit(self, fn, grouped=False):
    """``fn(params, *args)`` compiled for this placement, as ``run(*args)`` on :attr:`params`.

    Each argument keeps the placement it comes with (:meth:`put_batch`); the
    outputs are placed as XLA chooses.

    Args:
      fn: a model function of the params and arrays (and traced scalars).
      grouped: ``fn`` takes the keyword ``groups``, the device groups of its
        first argument's batch (:meth:`groups`), static: a batch split over
        the devices captions each device's own rows.
    """
    if grouped:
      def fn_grouped(params, batch, *args):
        return fn(params, batch, *args, groups=self.groups(len(batch)))
      fn_grouped.__name__ = fn.__name__  # the program's name, as in the compile logs
      jitted = jax.jit(fn_grouped)
    else:
      jitted = jax.jit(fn)

    def run(*args):
      return jitted(self.params, *args)

    return run

  def batches(self, prepared, displays=False):
    """Padded batches of ``image_stream.PreparedImage`` s, placed on the devices, one bucket each.

    Images prepared on the host are padded here and sent as float32. The
    others are sent as their uint8 originals, padded to an input bucket, and
    resized on the devices (``data.device_resize``) into the padded batch.

    Args:
      prepared: a list of ``PreparedImage``.
      displays: also fetch the resized uint8 image of those resized on the
        devices into their ``display``, once the caller is done with the batch.

    Yields:
      ``(members, images, sizes)``: indices into ``prepared`` (at most
      :attr:`batch_size`), ``(batch_size, Hb, Wb, 3)`` float32 images
      (unused slots all zero) and ``(batch_size, 2)`` int32 true sizes (the
      bucket's for unused slots), placed by :meth:`put_batch`.
    """
    for bucket, on_device, chunk in image_stream.bucket_chunks(prepared, self.buckets,
                                                               self.batch_size):
      sizes = image_stream.model_sizes(prepared, chunk, bucket, self.batch_size)
      if not on_device:
        yield (chunk, *self.put_batch(image_stream.host_batch(prepared, chunk, bucket,
                                                              self.batch_size), sizes))
        continue
      arrays = device_resize.batch_arrays([prepared[i].rgb for i in chunk],
                                          [prepared[i].size for i in chunk], bucket,
                                          self.batch_size)
      placed = dict(zip(arrays, self.put_batch(*arrays.values())))
      images, display = device_resize.resize_batch_jit(**placed, zero=np.uint32(0))
      yield (chunk, images, *self.put_batch(sizes))
      if displays:
        display = jax.device_get(display)
        for k, i in enumerate(chunk):
          h, w = prepared[i].size
          prepared[i].display = display[k, :h, :w].copy()


def _local_split():
  """Leading axis split over the local devices, on the mesh the pmapped programs' outputs use."""
  return jax.sharding.NamedSharding(
      jax.sharding.Mesh(np.array(jax.local_devices()), (BATCH_AXIS,)),
      jax.sharding.PartitionSpec(BATCH_AXIS))


def replicate(tree):
  """A copy of ``tree`` on every local device, sharded as a pmapped program's own outputs.

  Placing it on a mesh with the pmap's axis name lets the first call's program
  serve every later call (a replica on a differently named mesh compiles again).
  """
  devices = jax.local_devices()
  sharding = _local_split()
  return jax.tree.map(
      lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (len(devices),) + np.shape(x)),
                               sharding), tree)


def unreplicate(tree):
  """This process's first device's copy of a pmapped pytree, on the host.

  Reads the local shard only: indexing the global array would be a
  computation over every process's devices, which the processes would have
  to run in step.
  """

  def first_local(x):
    if not isinstance(x, jax.Array):
      return np.asarray(x)[0]
    shard = np.asarray(x.addressable_shards[0].data)
    return shard[0] if shard.ndim == x.ndim else shard

  return jax.tree.map(first_local, tree)


def prefetch_to_devices(batches, size=2):
  """Yields ``batches`` (leading local-device axis) already on the devices, ``size`` ahead.

  ``jax.device_put`` returns at once and copies in the background, so the
  next batches travel while the current step runs.
  """
  sharding = _local_split()
  queue = collections.deque()

  def put(batch):
    return jax.tree.map(lambda x: jax.device_put(x, sharding), batch)

  for batch in batches:
    queue.append(put(batch))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def gather_processes(arrays):
  """The per-process arrays of a dict concatenated on axis 0 in process order, on every process."""
  if jax.process_count() == 1:
    return arrays
  return {k: np.asarray(v) for k, v in
          multihost_utils.process_allgather(arrays, tiled=True).items()}


def share_from_chief(results):
  """The first process's JSON-able ``results`` on every process."""
  if jax.process_count() == 1:
    return results
  payload = np.frombuffer(json.dumps(results).encode(), np.uint8) if results is not None else (
      np.zeros(0, np.uint8))
  size = int(multihost_utils.broadcast_one_to_all(np.int64(payload.size)))
  buffer = np.zeros(size, np.uint8)
  buffer[:payload.size] = payload[:size]
  data = multihost_utils.broadcast_one_to_all(buffer)
  return json.loads(np.asarray(data, np.uint8).tobytes().decode())
