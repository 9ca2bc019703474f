"""Pure ``jax.numpy`` kernels: boxes, anchors, NMS, box sampling, RoI pooling."""
