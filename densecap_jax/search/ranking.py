"""Ranking an index's images by a phrase: the LM log-likelihood of the phrase given each region.

  index = search.open_index("photos.index")
  result = search(model, index, "a red car", top=20)
  for hit in result.hits:
    hit.rank, hit.image, hit.box, hit.score, hit.caption

An image's score is the largest, over its indexed regions, of the
length-normalised log-likelihood of the query given the region's fc7 code
(``RegionModel.score_codes``' ``mean_log_likelihood``: the sum over the
query's words and END, per token), as the paper ranks images (§4.3); its
best box is that region's box (xywh, 1-based, image pixels, upright).

Scoring every region is the exact ranking (``candidates=0``). A cheap first
stage cuts it: the ``candidates`` regions whose stored captions are most like
the query in words (:func:`caption_similarity`: the cosine of the two sets of
words weighted by their inverse document frequency over the index's
captions; near ties go to the higher objectness) are scored by the LM, and an
image ranks by its best candidate. What it can miss: a region whose caption
shares no (or only common) words with the query, though the LM would find
the query likely there -- a paraphrase, a region captioned for another of its
aspects ("a striped square" for the query "a blue square"), or an object
whose caption names a neighbour; and so an image whose only good region is
such a one. Such images drop out of the ranking or rank below where the
exhaustive search puts them.

Words outside the model's vocabulary are left out of the query (or scored as
``<UNK>``) and reported (``SearchResult.unknown``, ``notes``). A query whose
known words are all function words (``regions.phrases.FUNCTION_WORDS``:
"a man riding a horse" with a vocabulary that lacks "man", "riding" and
"horse" is "a a") is not ranked: its result has no hits and
``no_known_content_words`` set, and its ``notes`` say why.
"""

import dataclasses
import time

import numpy as np

from densecap_jax import files
from densecap_jax.search import builder as index_lib
from densecap_jax.regions import phrases as phrases_lib

DEFAULT_CANDIDATES = 5000


@dataclasses.dataclass
class Hit:
  """One ranked image.

  Attributes:
    rank: 1-based.
    image: its name in the indexed folder; path: its path.
    box: ``[x, y, w, h]`` floats, the best region's box (1-based, image pixels, upright).
    score: the best region's length-normalised log-likelihood of the query.
    log_likelihood: that region's sum over the query's tokens.
    caption: that region's stored caption; objectness: its objectness logit.
    width, height: the image's size (upright).
  """
  rank: int
  image: str
  path: str
  box: list
  score: float
  log_likelihood: float
  caption: str
  objectness: float
  width: int
  height: int


@dataclasses.dataclass
class SearchResult:
  """The hits of one query and how they were found.

  Attributes:
    query: the query as given; words: the words scored; unknown: words the
      model's vocabulary lacks (left out, or scored as ``<UNK>``).
    hits: :class:`Hit` s, best first; none when ``no_known_content_words``.
    regions_scored: regions the LM scored; candidates: the setting (0 = all).
    seconds: time taken.
    no_known_content_words: the words scored are all function words, so the
      query was not ranked.
  """
  query: str
  words: list
  unknown: list
  hits: list
  regions_scored: int
  candidates: int
  seconds: float
  no_known_content_words: bool = False

  @property
  def notes(self):
    """Lines to show with the hits: the words the model does not know and what was scored,
    and why a query is not ranked (``regions.phrases.notes``); empty for a known query."""
    return phrases_lib.notes(self.query, self.words, self.unknown)


def _text_statistics(index, vocab_size):
  """``(idf, caption_norms)``: ``(V + 2,)`` float32 word weights (0 for padding and unseen words)
  and ``(N,)`` float32 norms of the captions' weighted word sets; cached on the index."""
  if "text" not in index.cache:
    tokens = index.concatenated("tokens").astype(np.int64)
    present = np.zeros((len(tokens), vocab_size + 2), bool)
    present[np.arange(len(tokens))[:, None], tokens] = True
    present[:, 0] = False
    df = present.sum(axis=0)
    idf = np.where(df > 0, np.log((1.0 + len(tokens)) / (1.0 + df)) + 1.0, 0.0).astype(np.float32)
    norms = np.sqrt(present.astype(np.float32) @ (idf * idf)).astype(np.float32)
    index.cache["text"] = (idf, norms)
  return index.cache["text"]


def caption_similarity(index, word_ids, vocab_size):
  """``(N,)`` float32: how like the query's words each region's caption is, in ``[0, 1]``.

  The cosine of the query's and the caption's sets of words, each word
  weighted by its inverse document frequency over the index's captions.

  Args:
    index: a ``search.reader.Index``.
    word_ids: the query's word ids (``EncodedPhrases.labels`` row, 0 = padding).
    vocab_size: the model's vocabulary size.
  """
  idf, norms = _text_statistics(index, vocab_size)
  words = np.unique(np.asarray(word_ids, np.int64))
  words = words[(words > 0) & (words < len(idf))]
  tokens = index.concatenated("tokens")
  dot = np.zeros(len(tokens), np.float32)
  for word in words:
    dot += idf[word] ** 2 * (tokens == word).any(axis=1)
  query_norm = float(np.sqrt(np.sum(idf[words] ** 2)))
  if query_norm == 0:
    return dot
  return dot / np.maximum(norms * query_norm, 1e-12)


def candidate_rows(index, word_ids, vocab_size, count):
  """Global rows of the ``count`` regions whose captions are most like the query (sorted)."""
  similarity = caption_similarity(index, word_ids, vocab_size).astype(np.float64)
  objectness = index.concatenated("scores").astype(np.float64)
  key = similarity + 1e-6 * (1.0 / (1.0 + np.exp(-objectness)))
  if count >= len(key):
    return np.arange(len(key))
  return np.sort(np.argpartition(-key, count - 1)[:count])


def best_per_image(image_of_region, scores, top):
  """``(images, rows)``: the ``top`` images by their best region's score, and those regions.

  Args:
    image_of_region: ``(n,)`` the image number of each scored region.
    scores: ``(n,)`` their scores (higher is better).
    top: images wanted.
  """
  order = np.argsort(-scores, kind="stable")
  _, first = np.unique(image_of_region[order], return_index=True)
  best = order[np.sort(first)][:top]
  return image_of_region[best], best


def lm_scores(model, index, encoded, rows=None):
  """``(rows, sums, means)``: the LM scores of the query ``encoded`` given regions.

  Args:
    model: the ``inference.DenseCapPredictor``.
    index: the ``search.reader.Index``.
    encoded: one phrase, ``regions.phrases.EncodedPhrases``.
    rows: global rows to score, or ``None`` for all (read shard by shard).

  Returns:
    ``rows`` ``(n,)`` int64 and their ``(n,)`` float32 sums and per-token means.
  """
  if rows is None:
    parts = []
    for first, shard in index.shard_rows():
      scored = model.regions.score_codes(shard.array("codes"), encoded)
      parts.append((first + np.arange(len(scored["log_likelihood"])),
                    scored["log_likelihood"][:, 0], scored["mean_log_likelihood"][:, 0]))
    if not parts:
      return np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.float32)
    return tuple(np.concatenate(p) for p in zip(*parts))
  scored = model.regions.score_codes(index.rows("codes", rows), encoded)
  return (np.asarray(rows, np.int64), scored["log_likelihood"][:, 0],
          scored["mean_log_likelihood"][:, 0])


def _name_query(message, query):
  """``regions.phrases``' error about "phrase 0" reworded to name the query itself."""
  for prefix in (f"phrase 0 {files.quoted(query)}", "phrase 0"):
    if message.startswith(prefix):
      return f"query {files.quoted(query)}{message[len(prefix):]}"
  return message


def search(model, index, query, top=20, candidates=DEFAULT_CANDIDATES, fingerprint=None):
  """The ``top`` images of ``index`` ranked for ``query`` (see the module docstring).

  Args:
    model: the ``inference.DenseCapPredictor`` the index was built with.
    index: a ``search.reader.Index``.
    query: a phrase.
    top: images returned at most.
    candidates: regions the first stage keeps for the LM; 0 = score all.
    fingerprint: ``search.builder.model_fingerprint(model)`` when known (it
      hashes the parameters; pass it to search many times).

  Returns:
    A :class:`SearchResult` (without hits for a query of function words only).

  Raises:
    ValueError: one line: another model than the index's, an empty query or
      one with no word the model knows, a bad ``top`` or ``candidates``.
  """
  start = time.perf_counter()
  if top < 1:
    raise ValueError(f"--top must be positive, got {top}")
  if candidates < 0:
    raise ValueError(f"--candidates must be non-negative (0 = all regions), got {candidates}")
  index_lib.check_model(index.manifest, fingerprint or index_lib.model_fingerprint(model),
                        f"index {index.path}")
  if not isinstance(query, str) or not query.strip():
    raise ValueError("the query is empty; give a phrase, e.g. \"a red car\"")
  try:
    encoded = model.regions.encode_phrases([query])
  except ValueError as e:
    raise ValueError(_name_query(str(e), query)) from None
  if encoded.no_known_content_words[0]:
    return SearchResult(query=query, words=encoded.words[0], unknown=encoded.unknown[0], hits=[],
                        regions_scored=0, candidates=candidates,
                        seconds=time.perf_counter() - start, no_known_content_words=True)
  vocab_size = int(model.config.vocab_size)
  if candidates and candidates < index.num_regions:
    rows = candidate_rows(index, encoded.labels[0], vocab_size, candidates)
  else:
    rows = None
  rows, sums, means = lm_scores(model, index, encoded, rows)
  images, best = best_per_image(index.image_of_region[rows], means, top)
  best_rows = rows[best]
  boxes = index.rows("boxes", best_rows)
  objectness = index.rows("scores", best_rows)
  hits = []
  for rank, (image, k, box, caption, obj) in enumerate(zip(
      images, best, boxes, index.captions(best_rows), objectness), start=1):
    width, height = index.image_size(int(image))
    hits.append(Hit(rank=rank, image=index.image_names[image], path=index.image_path(int(image)),
                    box=[float(v) for v in box], score=float(means[k]),
                    log_likelihood=float(sums[k]), caption=caption, objectness=float(obj),
                    width=width, height=height))
  return SearchResult(query=query, words=encoded.words[0], unknown=encoded.unknown[0], hits=hits,
                      regions_scored=len(rows), candidates=candidates,
                      seconds=time.perf_counter() - start)
