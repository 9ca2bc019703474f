"""Batches where some images have boxes given (``--boxes_json``) and the others get detections."""


def mixed_batch(model, prepared, indices, paths, given, boxes_json, detect, with_boxes):
  """One batch where the images with given boxes go one way and the others another.

  Args:
    model: a ``predictor.DenseCapPredictor``.
    prepared: its ``PreparedImage`` s, one batch.
    indices: the index in ``paths`` of each.
    paths: all image paths.
    given: ``read_given_boxes``' list (``None`` entries: detections), or ``None``.
    boxes_json: the file of ``given``, for errors.
    detect: ``prepared -> outputs`` for the images without given boxes.
    with_boxes: ``(prepared, checked) -> outputs`` for the others, ``checked``
      their boxes as :func:`check_given_boxes` gives them.

  Returns:
    The output of each image, in order.
  """
  boxed = [k for k, j in enumerate(indices) if given is not None and given[j] is not None]
  detected = [k for k in range(len(prepared)) if k not in boxed]
  outputs = [None] * len(prepared)
  if detected:
    for k, output in zip(detected, detect([prepared[k] for k in detected])):
      outputs[k] = output
  if boxed:
    subset = [prepared[k] for k in boxed]
    checked = check_given_boxes(model, subset, [paths[indices[k]] for k in boxed],
                                [given[indices[k]] for k in boxed], boxes_json)
    for k, output in zip(boxed, with_boxes(subset, checked)):
      outputs[k] = output
  return outputs


def caption_group(model, prepared, indices, paths, given, boxes_json, max_detections,
                  displays=False):
  """Results of one batch of prepared images: given boxes captioned, the others detected.

  Args:
    model, prepared, indices, paths, given, boxes_json: as :func:`mixed_batch`.
    max_detections: detections kept per image (``None``: all).
    displays: fill ``display`` of images resized on the devices.

  Returns:
    Per image, in order, ``predict_prepared``'s dict (detections) or
    ``caption_prepared``'s (given boxes, with ``caption_log_probs``), boxes in
    the resized image.
  """
  return mixed_batch(
      model, prepared, indices, paths, given, boxes_json,
      lambda subset: model.predict_prepared(subset, max_detections, displays=displays),
      lambda subset, checked: model.regions.caption_prepared(subset, checked, coords="resized",
                                                             displays=displays))


def check_given_boxes(model, prepared, paths, boxes, boxes_json):
  """``RegionModel.given_boxes`` of prepared images, with errors naming the file and image.

  Args:
    model: a ``predictor.DenseCapPredictor``.
    prepared: its ``PreparedImage`` s.
    paths: the image path of each.
    boxes: per image, ``(k, 4)`` xywh in the image's pixels (``read_given_boxes``).
    boxes_json: the file the boxes came from, for errors.

  Returns:
    ``given_boxes``' ``(image_boxes, resized_boxes, clipped, outside)`` per image.

  Raises:
    ValueError: one line naming ``boxes_json``, the image and the box index.
  """
  return model.regions.given_boxes(prepared, boxes,
                                   names=[f"--boxes_json {boxes_json}: {path!r}" for path in paths])
