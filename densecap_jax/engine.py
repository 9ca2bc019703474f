"""Running a model on devices: the mesh, parameters placed, batches split over the devices."""

import jax


BATCH_AXIS = "batch"


def default_devices():
  """The devices a model runs on by default: every local accelerator, or one CPU device.

  Batches are split over several GPUs or TPU cores; on a CPU the forced host
  devices share the same cores, so one device does the same work with less
  padding.
  """
  devices = jax.local_devices()
  return devices if devices[0].platform != "cpu" else devices[:1]
