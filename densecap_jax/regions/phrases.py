"""Phrases to token rows, tokenised exactly as training captions were (``data.vocab``).

A phrase is split by ``vocab.tokenize_phrase`` (the original ``preprocess.py``
rules: lower case, punctuation deleted, ASCII whitespace). Each word outside
the vocabulary becomes ``<UNK>`` when the vocabulary has it; a vocabulary
without ``<UNK>`` (a model trained on data with no rare words) cannot say
anything of such a word, so it is left out of the phrase. Either way the
words are reported (``EncodedPhrases.unknown``), and :func:`notes` words the
lines that the commands and pages show with a phrase's scores.

A phrase with no known word is an error. A phrase whose known words are all
function words (:data:`FUNCTION_WORDS`) -- with the bundled model, whose
vocabulary has no ``<UNK>``, "a man riding a horse" is scored as "a a" -- is
scored, but its scores say nothing of what to look for: results flag it
(``no_known_content_words``) and the commands and pages show a notice
instead of ranking regions by it.

Rows are cut to the longest phrase and both their count and their length are
padded to a few static sizes (``static_size``), so scoring phrases of other
counts and lengths reuses the compiled programs.
"""

import dataclasses

import numpy as np

from densecap_jax import files
from densecap_jax.data import vocab as vocab_lib

# Function words: words that say where or how, not what. Written as the
# tokeniser leaves caption words (``vocab.tokenize_phrase``: lower case,
# punctuation deleted) and kept small: the articles, the prepositions and
# conjunctions that join Visual Genome's region descriptions ("a man on a
# horse", "the side of the road"), and the forms of "be" and "have" that
# they use. Every other known word is a content word (``<UNK>`` is none).
FUNCTION_WORDS = frozenset("""
    a an the
    of on in at to with by for from near under over above below behind into onto
    and or
    is are has have
""".split())


def is_content_word(word):
  """Whether a scored word says what to look for: known, and not a function word."""
  return word != vocab_lib.UNK and word not in FUNCTION_WORDS


def has_content_word(words):
  """Whether ``words`` (a phrase's words as scored) hold a content word."""
  return any(is_content_word(w) for w in words)


def _quoted(words):
  return ", ".join(f'"{w}"' for w in words)


def notes(text, words, unknown):
  """The lines to show with a phrase's scores (none for a phrase the model knows).

  Args:
    text: the phrase as given.
    words: its words as scored (``EncodedPhrases.words`` row).
    unknown: its words outside the vocabulary (``EncodedPhrases.unknown`` row).

  Returns:
    A list of strings: with unknown words, ``"a man riding a horse": the
    model does not know "man", "riding", "horse"; scored as "a a"``; and
    when no content word is left, a line saying the scores rank nothing
    (it starts ``not ranked:``).
  """
  lines = []
  if unknown:
    lines.append(f'"{text}": the model does not know {_quoted(unknown)}; scored as '
                 f'"{" ".join(words)}"')
  if not has_content_word(words):
    lines.append(f"not ranked: of this phrase the model knows only function words "
                 f"({_quoted(words)}), which do not say what to look for")
  return lines


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
    texts: the phrases as given.
  """
  labels: np.ndarray
  words: list
  unknown: list
  texts: list

  @property
  def no_known_content_words(self):
    """Per phrase, whether the words scored are all function words (``FUNCTION_WORDS``)."""
    return [not has_content_word(w) for w in self.words]

  def fields(self):
    """The results' fields of the phrases: ``phrases`` (the words scored, joined),
    ``unknown_words`` and ``no_known_content_words``, per phrase."""
    return {"phrases": [" ".join(w) for w in self.words], "unknown_words": self.unknown,
            "no_known_content_words": self.no_known_content_words}

  def notes(self, i):
    """:func:`notes` of phrase ``i``."""
    return notes(self.texts[i], self.words[i], self.unknown[i])

  @property
  def count(self):
    return len(self.words)

  @property
  def lengths(self):
    """``(P,)`` int32, the tokens scored per phrase: its words and END."""
    return np.asarray([len(w) + 1 for w in self.words], np.int32)


def _cut_words(words, limit=files.MAX_QUOTED):
  """``words`` joined by commas for a message, cut to ``limit`` characters with the count."""
  text = ", ".join(words)
  if len(text) <= limit:
    return text
  return f"{text[:limit]}... ({len(words):,} words)"


def encode_phrases(phrases, vocab, seq_length):
  """Tokenises and encodes phrases.

  Args:
    phrases: a string or a list of strings.
    vocab: the model's ``load_vocab`` list (``vocab[0]`` unused).
    seq_length: the model's ``seq_length``, the most words a phrase may have.

  Returns:
    An :class:`EncodedPhrases`.

  Raises:
    ValueError: one line naming the phrase (its index and its text, cut
      to 60 characters with its length by ``files.quoted``): not a string, a
      character the tokeniser rejects, no word the model knows, or more than
      ``seq_length`` words.
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
      raise ValueError(f"phrase {i}: {str(e).replace(repr(phrase), files.quoted(phrase))}"
                       ) from None
    missing = [t for t in tokens if t not in token_to_idx]
    if has_unk:
      kept = [t if t in token_to_idx else vocab_lib.UNK for t in tokens]
    else:
      kept = [t for t in tokens if t in token_to_idx]
    if not kept:
      why = (f"none of its words ({_cut_words(missing)}) is in the model's vocabulary"
             if missing else "it has no words")
      raise ValueError(f"phrase {i} {files.quoted(phrase)}: {why}")
    if len(kept) > seq_length:
      raise ValueError(f"phrase {i} {files.quoted(phrase)} has {len(kept)} words, more than "
                       f"the model's seq_length {seq_length}")
    rows.append([token_to_idx[t] for t in kept])
    words.append(kept)
    unknown.append(missing)
  length = static_size(max(len(r) for r in rows), cap=seq_length, floor=4)
  labels = np.zeros((static_size(len(rows)), length), np.int32)
  for i, row in enumerate(rows):
    labels[i, :len(row)] = row
  return EncodedPhrases(labels, words, unknown, list(phrases))
