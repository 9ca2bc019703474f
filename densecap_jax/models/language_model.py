"""The captioning language model (``LanguageModel.lua`` + torch-rnn, reference §6).

Token ids are the original's throughout: words ``1..V``, ``V+1`` = START = END,
``V+2`` = NULL (padding inside the LM input only), ``0`` = padding in label
arrays. Row ``i`` of the word embedding holds token ``i + 1``; output class
``j`` of the ``V + 1`` scores is token ``j + 1`` (so class ``V`` is END).

Parameters (names map to the original's modules):

* ``image_encoder``: Linear(fc_dim -> W) + ReLU, one time step per region.
* ``word_embed``: ``(V + 2, W)`` lookup table, init N(0, 1).
* ``lstm``: torch-rnn's layout, a single ``weight`` of shape ``(W + H, 4H)``
  (rows ``0..W-1`` multiply the input, rows ``W..W+H-1`` multiply ``h_{t-1}``)
  and ``bias`` ``(4H,)``; gate columns in the order i, f, o, g (§6.3). Converted
  torch-rnn weights load without any transposition.
* ``output_proj``: Linear(H -> V + 1) at every time step.

Precision (``models/precision.py``): the three matrix products (image
encoder, LSTM, output projection) follow the model's policy and return
float32; the gates, the cell state, the scores and their argmax are float32.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from densecap_jax.models import precision as precision_lib


def torch_linear_init(fan_in):
  """Torch's default Linear init, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (for weight and bias)."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def lstm_weight_init(key, shape, dtype=jnp.float32):
  """torch-rnn ``LSTM:reset``: N(0, 1/(D+H)) for a ``(D + H, 4H)`` weight."""
  return jax.random.normal(key, shape, dtype) / math.sqrt(shape[0])


def lstm_bias_init(key, shape, dtype=jnp.float32):
  """torch-rnn ``LSTM:reset``: zero bias except 1 on the forget gate ``[H, 2H)``."""
  del key
  hidden = shape[0] // 4
  return jnp.zeros(shape, dtype).at[hidden:2 * hidden].set(1.0)


def lstm_step(weight, bias, carry, x, precision="float32"):
  """One torch-rnn LSTM step (§6.3).

  Args:
    weight: ``(D + H, 4H)``, input rows first.
    bias: ``(4H,)``; gate columns i, f, o, g.
    carry: ``(c, h)``, each ``(..., H)`` float32.
    x: ``(..., D)`` float32 input.
    precision: ``configs.PRECISIONS`` name of the matrix product.

  Returns:
    ``((c_t, h_t), h_t)``, float32.
  """
  c, h = carry
  hidden = h.shape[-1]
  a = precision_lib.matmul(jnp.concatenate([x, h], axis=-1), weight, precision) + bias
  i = jax.nn.sigmoid(a[..., :hidden])
  f = jax.nn.sigmoid(a[..., hidden:2 * hidden])
  o = jax.nn.sigmoid(a[..., 2 * hidden:3 * hidden])
  g = jnp.tanh(a[..., 3 * hidden:])
  c = f * c + i * g
  h = o * jnp.tanh(c)
  return (c, h), h


class LSTM(nn.Module):
  """torch-rnn ``nn.LSTM(input_size, hidden_size)`` over a ``(N, T, D)`` sequence.

  ``precision`` (a ``configs.PRECISIONS`` name) is that of the matrix product.
  """
  input_size: int
  hidden_size: int
  precision: str = "float32"

  @nn.compact
  def __call__(self, inputs, carry=None):
    """Runs the LSTM over time.

    Args:
      inputs: ``(N, T, D)`` float32.
      carry: ``(c, h)`` each ``(N, H)``; zeros when None (h0 = c0 = 0).

    Returns:
      ``(hidden (N, T, H), carry)``.
    """
    weight = self.param("weight", lstm_weight_init, (self.input_size + self.hidden_size,
                                                     4 * self.hidden_size))
    bias = self.param("bias", lstm_bias_init, (4 * self.hidden_size,))
    if carry is None:
      zeros = jnp.zeros(inputs.shape[:1] + (self.hidden_size,), inputs.dtype)
      carry = (zeros, zeros)
    step = lambda c, x: lstm_step(weight, bias, c, x, self.precision)
    carry, hidden = jax.lax.scan(step, carry, jnp.swapaxes(inputs, 0, 1))
    return jnp.swapaxes(hidden, 0, 1), carry


def lm_input_tokens(labels, vocab_size):
  """Teacher-forcing word inputs: ``[START, s_1, ..., s_L]`` with 0 -> NULL (§6.4).

  Args:
    labels: ``(..., L)`` int32 word ids ``1..V``, 0-padded.
    vocab_size: V.

  Returns:
    ``(..., L + 1)`` int32 tokens in ``1..V+2``.
  """
  start = jnp.full(labels.shape[:-1] + (1,), vocab_size + 1, labels.dtype)
  tokens = jnp.concatenate([start, labels], axis=-1)
  return jnp.where(tokens == 0, vocab_size + 2, tokens)


def lm_targets(labels, vocab_size):
  """Targets of the ``L + 2`` output steps (``LanguageModel:getTarget``, §6.4).

  Column 0 (the image step) is 0, columns ``1..L`` are the labels, and the
  first 0 at or after column 1 becomes END (``V + 1``); a full-length caption
  gets END in the last column ``L + 1``. 0 means "ignored".

  Args:
    labels: ``(..., L)`` int32 word ids, 0-padded.
    vocab_size: V.

  Returns:
    ``(..., L + 2)`` int32 targets in ``0..V+1``.
  """
  zero = jnp.zeros(labels.shape[:-1] + (1,), labels.dtype)
  targets = jnp.concatenate([zero, labels, zero], axis=-1)
  is_zero = (targets == 0).at[..., 0].set(False)
  first_zero = jnp.argmax(is_zero, axis=-1)
  column = jnp.arange(targets.shape[-1])
  return jnp.where(column == first_zero[..., None], vocab_size + 1, targets)


class LanguageModel(nn.Module):
  """Image-conditioned LSTM captioner (§6).

  Attributes:
    vocab_size: V.
    seq_length: L, the number of sampled tokens.
    input_dim: size of the region codes (fc_dim).
    encoding_size: W, word and image encoding size (``rnn_encoding_size``).
    hidden_size: H (``rnn_size``).
    precision: ``configs.PRECISIONS`` name of the matrix products (module doc).
  """
  vocab_size: int
  seq_length: int
  input_dim: int
  encoding_size: int
  hidden_size: int
  precision: str = "float32"

  def setup(self):
    dense_kwargs = precision_lib.dense_kwargs(self.precision)
    self.image_encoder = nn.Dense(self.encoding_size,
                                  kernel_init=torch_linear_init(self.input_dim),
                                  bias_init=torch_linear_init(self.input_dim), **dense_kwargs)
    self.word_embed = nn.Embed(self.vocab_size + 2, self.encoding_size,
                               embedding_init=nn.initializers.normal(1.0))
    self.lstm = LSTM(self.encoding_size, self.hidden_size, self.precision)
    self.output_proj = nn.Dense(self.vocab_size + 1,
                                kernel_init=torch_linear_init(self.hidden_size),
                                bias_init=torch_linear_init(self.hidden_size), **dense_kwargs)

  def embed_tokens(self, tokens):
    """``(...,)`` token ids ``1..V+2`` -> ``(..., W)`` embeddings."""
    return self.word_embed(tokens - 1)

  def __call__(self, codes, labels):
    """Teacher-forced scores (training forward, §6.4).

    Args:
      codes: ``(N, fc_dim)`` region codes.
      labels: ``(N, L)`` int32 word ids, 0-padded.

    Returns:
      ``(N, L + 2, V + 1)`` float32 unnormalised scores; step 0 is the image
      step, step ``t + 1`` predicts label ``t`` (0-based), step ``len + 1`` END.
    """
    image_step = nn.relu(self.image_encoder(codes))[:, None, :]
    words = self.embed_tokens(lm_input_tokens(labels, self.vocab_size))
    hidden, _ = self.lstm(jnp.concatenate([image_step, words], axis=1))
    return self.output_proj(hidden)

  def sample(self, codes):
    """Greedy captions (``LanguageModel:sample`` with ``sample_argmax``, §6.5).

    Feeds the encoded image (output discarded), then START, then each argmax
    token (first index on ties) for exactly ``seq_length`` steps; tokens after
    an END keep being generated.

    Args:
      codes: ``(N, fc_dim)`` region codes.

    Returns:
      ``(N, L)`` int32 tokens in ``1..V+1``.
    """
    return self._greedy(codes, with_log_probs=False)

  def sample_scored(self, codes):
    """Greedy captions and the log-probability of each chosen token.

    The same tokens as ``sample`` (the same program, plus a log-softmax of
    each step's scores).

    Args:
      codes: ``(N, fc_dim)`` region codes.

    Returns:
      ``(tokens, log_probs)``: ``(N, L)`` int32 tokens in ``1..V+1`` and
      ``(N, L)`` float32 ``log p(token_t | image, tokens_<t)``.
    """
    return self._greedy(codes, with_log_probs=True)

  def _greedy(self, codes, with_log_probs):
    image_step = nn.relu(self.image_encoder(codes))[:, None, :]
    _, carry = self.lstm(image_step)
    start = jnp.full(codes.shape[:1], self.vocab_size + 1, jnp.int32)

    def step(state, _):
      carry, token = state
      hidden, carry = self.lstm(self.embed_tokens(token)[:, None, :], carry)
      scores = self.output_proj(hidden[:, 0])
      token = jnp.argmax(scores, axis=-1).astype(jnp.int32) + 1
      if not with_log_probs:
        return (carry, token), token
      log_prob = jnp.take_along_axis(jax.nn.log_softmax(scores), token[:, None] - 1, axis=-1)
      return (carry, token), (token, log_prob[:, 0])

    _, out = jax.lax.scan(step, (carry, start), None, length=self.seq_length)
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), out)

  def phrase_log_likelihood(self, codes, phrases):
    """Teacher-forced log-likelihood of every phrase given every region (paper §4.3).

    The image step and the START step depend on the region only, so they run
    once per region; the LSTM then runs on every (region, phrase) pair for
    ``T = phrases.shape[1] + 1`` steps only (the phrase's own words and its
    END), not ``L + 2``: pass phrase rows cut to the longest phrase (see
    ``regions.phrases``) to save the rest. The log-softmax normaliser of each
    step needs the scores of the whole vocabulary; only the target's
    log-probability is kept of it, so no ``(N, P, T, V + 1)`` array is made.

    The score of a step is the one the captioning loss uses (``lm_targets``):
    the words of the phrase, then END.

    Args:
      codes: ``(N, fc_dim)`` region codes.
      phrases: ``(P, T - 1)`` int32 word ids ``1..V``, 0-padded (at least one
        column; an all-zero row is the empty phrase, scored on END alone).

    Returns:
      ``(N, P, T)`` float32 ``log p(target_t | image, target_<t)``, 0 on
      steps past the phrase's END.
    """
    num_phrases, length = phrases.shape
    image_step = nn.relu(self.image_encoder(codes))[:, None, :]
    _, carry = self.lstm(image_step)
    start = jnp.full(codes.shape[:1], self.vocab_size + 1, jnp.int32)
    hidden, carry = self.lstm(self.embed_tokens(start)[:, None, :], carry)
    targets = lm_targets(phrases, self.vocab_size)[:, 1:length + 2]  # (P, T): words, END, 0
    first = jax.nn.log_softmax(self.output_proj(hidden[:, 0]))  # (N, V + 1), shared
    first = first[:, jnp.maximum(targets[:, 0], 1) - 1]  # (N, P)

    num_regions = codes.shape[0]
    pairs = lambda x: jnp.broadcast_to(x[:, None], (num_regions, num_phrases) + x.shape[1:]
                                       ).reshape((num_regions * num_phrases,) + x.shape[1:])
    carry = jax.tree.map(pairs, carry)
    words = self.embed_tokens(lm_input_tokens(phrases, self.vocab_size)[:, 1:])  # (P, T-1, W)

    def step(carry, inputs):
      word, target = inputs  # (P, W), (P,)
      word = jnp.broadcast_to(word[None], (num_regions,) + word.shape).reshape(
          num_regions * num_phrases, -1)
      hidden, carry = self.lstm(word[:, None, :], carry)
      log_probs = jax.nn.log_softmax(self.output_proj(hidden[:, 0]))
      target = jnp.tile(jnp.maximum(target, 1) - 1, num_regions)
      return carry, jnp.take_along_axis(log_probs, target[:, None], axis=-1)[:, 0]

    _, rest = jax.lax.scan(step, carry, (jnp.swapaxes(words, 0, 1), targets[:, 1:].T))
    rest = jnp.swapaxes(rest, 0, 1).reshape(num_regions, num_phrases, length)
    log_probs = jnp.concatenate([first[..., None], rest], axis=-1)
    return jnp.where(targets[None] > 0, log_probs, 0.0)
