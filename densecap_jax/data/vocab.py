"""Captions: the original tokeniser, the vocabulary and token <-> id helpers.

Token ids follow reference §0.1 and §6: words are ``1..V`` (``V`` = vocabulary
size, ``<UNK>`` included when present), ``V + 1`` is START = END for the
language model, and ``0`` pads stored label rows.

Vocabulary order: the original assigned ids in Python-2 ``set`` iteration
order (§8.3 step 6), which cannot be reproduced; here the kept tokens are
sorted by code point and ``<UNK>`` (when needed) comes last, so the same data
always gives the same ids. Code that reads a dataset must use its stored
``idx_to_token`` (``load_vocab``), never rebuild the order.
"""

import collections
import string

import numpy as np

from densecap_jax import files

UNK = "<UNK>"

# §8.3 step 4: the original's replacement table, applied before the ASCII check.
REPLACEMENTS = (
    ("\u00bd", "half"),     # ½
    ("\u2014", "-"),        # em dash
    ("\u2122", ""),         # ™
    ("\u00a2", "cent"),     # ¢
    ("\u00e7", "c"),        # ç
    ("\u00fb", "u"),        # û
    ("\u00e9", "e"),        # é
    ("\u00b0", " degree"),  # °
    ("\u00e8", "e"),        # è
    ("\u2026", ""),         # …
)
_DELETE_PUNCTUATION = str.maketrans("", "", string.punctuation)
NON_ASCII_MODES = ("error", "drop")


def tokenize_phrase(phrase, *, non_ascii="error"):
  """Splits a region phrase into words exactly as ``preprocess.py`` does (§8.3 step 4).

  Steps, in order: the ``REPLACEMENTS`` table; a check that the rest is ASCII;
  lower-casing; deletion of every ASCII punctuation character (so "man's" ->
  "mans", "t-shirt" -> "tshirt"); splitting on ASCII whitespace.

  Args:
    phrase: the caption, ``str``.
    non_ascii: ``'error'`` (default) raises on any other non-ASCII character,
      where the original crashed (§8.3 step 4 quirk); ``'drop'`` deletes such
      characters instead.

  Returns:
    List of lower-case ASCII word strings (empty for an empty phrase).

  Raises:
    ValueError: ``phrase`` is not a string, or holds a non-ASCII character that
      the table does not replace and ``non_ascii='error'``.
  """
  if non_ascii not in NON_ASCII_MODES:
    raise ValueError(f"non_ascii must be one of {NON_ASCII_MODES}, got {non_ascii!r}")
  if not isinstance(phrase, str):
    raise ValueError(f"phrase must be a string, got {type(phrase).__name__}")
  for old, new in REPLACEMENTS:
    phrase = phrase.replace(old, new)
  if non_ascii == "drop":
    phrase = phrase.encode("ascii", "ignore").decode("ascii")
  elif not phrase.isascii():
    bad = next(ch for ch in phrase if not ch.isascii())
    raise ValueError(f"non-ASCII character {bad!r} (U+{ord(bad):04X}) in phrase {phrase!r}")
  # Python 2 byte-string semantics: only ASCII whitespace separates words.
  words = phrase.lower().translate(_DELETE_PUNCTUATION).encode("ascii").split()
  return [w.decode("ascii") for w in words]


def keep_by_length(tokens, max_token_length):
  """§8.3 step 5: ``max_token_length > 0 and len(tokens) <= max_token_length``.

  [QUIRK] ``max_token_length = 0`` therefore drops every caption, although the
  original's help text says 0 disables the filter.
  """
  return max_token_length > 0 and len(tokens) <= max_token_length


def build_vocab(token_lists, min_token_instances):
  """The vocabulary of §8.3 step 6.

  Args:
    token_lists: iterable of token lists (the kept captions of all splits).
    min_token_instances: a token is kept when it occurs at least this often.

  Returns:
    ``(vocab, counts)``: ``vocab`` is the list of kept tokens sorted by code
    point, followed by ``'<UNK>'`` when any token was dropped; id of
    ``vocab[i]`` is ``i + 1``. ``counts`` is the ``collections.Counter`` of all
    tokens.
  """
  counts = collections.Counter()
  for tokens in token_lists:
    counts.update(tokens)
  vocab = sorted(t for t, c in counts.items() if c >= min_token_instances)
  if len(vocab) < len(counts):
    vocab.append(UNK)
  return vocab, counts


def vocab_dicts(vocab):
  """``(token_to_idx, idx_to_token)`` of the JSON file (§8.5): 1-based ids, string keys for ids."""
  token_to_idx = {token: i + 1 for i, token in enumerate(vocab)}
  idx_to_token = {str(i + 1): token for i, token in enumerate(vocab)}
  return token_to_idx, idx_to_token


def encode_tokens(tokens, token_to_idx, length):
  """Encodes a token list as a 0-padded int row (§8.3 step 7).

  Args:
    tokens: list of at most ``length`` tokens.
    token_to_idx: ``{token: id}`` with 1-based ids; unknown tokens map to
      ``token_to_idx['<UNK>']``.
    length: row length ``L``.

  Returns:
    List of ``length`` ints.

  Raises:
    ValueError: more than ``length`` tokens, or an unknown token and no ``<UNK>``.
  """
  if len(tokens) > length:
    raise ValueError(f"caption has {len(tokens)} tokens, more than the row length {length}")
  ids = []
  for token in tokens:
    if token in token_to_idx:
      ids.append(token_to_idx[token])
    elif UNK in token_to_idx:
      ids.append(token_to_idx[UNK])
    else:
      raise ValueError(f"token {token!r} is not in the vocabulary, which has no {UNK}")
  return ids + [0] * (length - len(ids))


def load_vocab(json_path):
  """Reads ``idx_to_token`` from a preprocessed dataset's JSON (§8.5).

  Returns:
    ``list`` of length ``V + 1``: ``vocab[i]`` is the token of id ``i`` for
    ``i = 1..V``; ``vocab[0]`` is ``None`` (id 0 is padding).

  Raises:
    ValueError: missing file or field, or ids that are not exactly ``1..V``.
  """
  info = files.read_json(json_path, "dataset JSON")
  idx_to_token = info.get("idx_to_token") if isinstance(info, dict) else None
  return vocab_from_idx_to_token(idx_to_token, json_path)


def vocab_from_idx_to_token(idx_to_token, source="idx_to_token"):
  """The ``load_vocab`` list from an ``{"id": token}`` dict (string or int keys)."""
  if not isinstance(idx_to_token, dict):
    raise ValueError(f"{source}: field 'idx_to_token' must be an object of id -> token")
  try:
    by_id = {int(k): v for k, v in idx_to_token.items()}
  except ValueError:
    raise ValueError(f"{source}: idx_to_token keys must be integer ids") from None
  if sorted(by_id) != list(range(1, len(by_id) + 1)):
    raise ValueError(f"{source}: idx_to_token ids must be exactly 1..{len(by_id)}")
  return [None] + [by_id[i] for i in range(1, len(by_id) + 1)]


def token_to_idx_of(vocab):
  """``{token: id}`` for a ``load_vocab`` list."""
  return {token: i for i, token in enumerate(vocab) if i > 0}


def decode_sequence(ids, vocab):
  """Decodes one row of token ids to text as ``decodeSequence`` (§6.6).

  Words are joined by single spaces; decoding stops at the first END
  (``V + 1``) or 0 (padding). ``<UNK>`` is emitted literally; an immediate END
  gives ``""``.

  Args:
    ids: 1-D sequence of ints.
    vocab: a ``load_vocab`` list (``vocab[0]`` unused).

  Raises:
    ValueError: an id is neither a word, END nor 0.
  """
  words = []
  size = len(vocab) - 1
  for i in ids:
    i = int(i)
    if i in (0, size + 1):
      break
    if not 1 <= i <= size:
      raise ValueError(f"token id {i} is not in the vocabulary of {size} words")
    words.append(vocab[i])
  return " ".join(words)


def decode_captions(tokens, vocab):
  """``decode_sequence`` over the last axis of ``(..., L)`` tokens -> nested lists of strings."""
  tokens = np.asarray(tokens)
  if tokens.ndim < 1:
    raise ValueError(f"tokens must have shape (..., L), got {tokens.shape}")
  if tokens.ndim == 1:
    return decode_sequence(tokens, vocab)
  return [decode_captions(row, vocab) for row in tokens]
