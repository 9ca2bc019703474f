"""Data: preprocessing, synthetic scenes, loaders (and the shape buckets of ``configs.buckets``).

Command-line tools (not imported here): ``python -m densecap_jax.data.preprocess``
(Visual Genome -> HDF5 + JSON), ``python -m densecap_jax.data.synthetic``
(synthetic scenes in the Visual Genome format) and
``python -m densecap_jax.data.tfds_builder`` (HDF5 -> TFDS array_record).
"""

from densecap_jax.configs.buckets import make_buckets, pad_to_bucket, pick_bucket
from densecap_jax.data.images import (VGG_MEAN_BGR, load_rgb, prepare_test_image,
                                      resize_long_side_pil, resize_long_side_torch, vgg_preprocess)
from densecap_jax.data.loader import SPLITS, BatchIterator, DenseCapH5, make_batches
from densecap_jax.data.vocab import (UNK, decode_captions, decode_sequence, encode_tokens,
                                     load_vocab, token_to_idx_of, tokenize_phrase)
