"""Phrases to token rows, tokenised exactly as training captions were (``data.vocab``).

A phrase is split by ``vocab.tokenize_phrase`` (the original ``preprocess.py``
rules: lower case, punctuation deleted, ASCII whitespace). Each word outside
the vocabulary becomes ``<UNK>`` when the vocabulary has it; a vocabulary
without ``<UNK>`` (a model trained on data with no rare words) cannot say
anything of such a word, so it is left out of the phrase. Either way the
words are reported (``EncodedPhrases.unknown``).

Rows are cut to the longest phrase and both their count and their length are
padded to a few static sizes (``static_size``), so scoring phrases of other
counts and lengths reuses the compiled programs.
"""

import dataclasses

import numpy as np

from densecap_jax.data import vocab as vocab_lib


def static_size(n, cap=None, floor=1):
  """The static size ``n`` is padded to: the next power of two ``>= max(n, floor)``, at most ``cap``."""
  size = max(int(floor), 1)
  while size < n:
    size *= 2
  return size if cap is None else min(size, int(cap))


@dataclasses.dataclass
class EncodedPhrases:
  """Phrases as token rows for ``LanguageModel.phrase_log_likelihood``.

  Attributes:
    labels: ``(P_pad, T_pad)`` int32 word ids, 0-padded; rows beyond the
      phrases are empty phrases.
    words: per phrase, the words scored (``<UNK>`` in place of unknown ones
      when the vocabulary has it).
    unknown: per phrase, the words outside the vocabulary.
  """
  labels: np.ndarray
  words: list
  unknown: list

  @property
  def count(self):
    return len(self.words)

  @property
  def lengths(self):
    """``(P,)`` int32, the tokens scored per phrase: its words and END."""
    return np.asarray([len(w) + 1 for w in self.words], np.int32)


def encode_phrases(phrases, vocab, seq_length):
  """Tokenises and encodes phrases.

  Args:
    phrases: a string or a list of strings.
    vocab: the model's ``load_vocab`` list (``vocab[0]`` unused).
    seq_length: the model's ``seq_length``, the most words a phrase may have.

  Returns:
    An :class:`EncodedPhrases`.

  Raises:
    ValueError: one line naming the phrase: not a string, a character the
      tokeniser rejects, no word the model knows, or more than ``seq_length``
      words.
  """
  if isinstance(phrases, str):
    phrases = [phrases]
  if not isinstance(phrases, (list, tuple)) or not phrases:
    raise ValueError("phrases must be a non-empty list of strings")
  token_to_idx = vocab_lib.token_to_idx_of(vocab)
  has_unk = vocab_lib.UNK in token_to_idx
  rows, words, unknown = [], [], []
  for i, phrase in enumerate(phrases):
    if not isinstance(phrase, str):
      raise ValueError(f"phrase {i} must be a string, got {type(phrase).__name__}")
    try:
      tokens = vocab_lib.tokenize_phrase(phrase)
    except ValueError as e:
      raise ValueError(f"phrase {i}: {e}") from None
    missing = [t for t in tokens if t not in token_to_idx]
    if has_unk:
      kept = [t if t in token_to_idx else vocab_lib.UNK for t in tokens]
    else:
      kept = [t for t in tokens if t in token_to_idx]
    if not kept:
      why = (f"none of its words ({', '.join(missing)}) is in the model's vocabulary" if missing
             else "it has no words")
      raise ValueError(f"phrase {i} {phrase!r}: {why}")
    if len(kept) > seq_length:
      raise ValueError(f"phrase {i} {phrase!r} has {len(kept)} words, more than the model's "
                       f"seq_length {seq_length}")
    rows.append([token_to_idx[t] for t in kept])
    words.append(kept)
    unknown.append(missing)
  length = static_size(max(len(r) for r in rows), cap=seq_length, floor=4)
  labels = np.zeros((static_size(len(rows)), length), np.int32)
  for i, row in enumerate(rows):
    labels[i, :len(row)] = row
  return EncodedPhrases(labels, words, unknown)
