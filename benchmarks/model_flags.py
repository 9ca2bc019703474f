"""Flags shared by the inference benchmarks (``model.py``, ``model_stages.py``)."""

from densecap_jax import configs


def add_common_flags(parser, *, repeats, repeats_help, warmup_help):
  """--configs, --vocab_size, --num_proposals, --warmup, --repeats, --seed."""
  parser.add_argument("--configs", default="tiny,vgg16",
                      help=f"model configs, comma-separated, of {configs.MODEL_CONFIGS}")
  parser.add_argument("--vocab_size", type=int, default=None,
                      help="V for every config (default: tiny 64, vgg16 10000)")
  parser.add_argument("--num_proposals", type=int, default=None,
                      help="proposals per image for every config (default: the config's)")
  parser.add_argument("--warmup", type=int, default=1, help=warmup_help)
  parser.add_argument("--repeats", type=int, default=repeats, help=repeats_help)
  parser.add_argument("--seed", type=int, default=0)


def check_common_flags(args):
  """Checks the flags of :func:`add_common_flags`; ``args.configs`` becomes a tuple.

  Raises:
    ValueError: one line naming the flag.
  """
  args.configs = tuple(args.configs.split(","))
  unknown = [c for c in args.configs if c not in configs.MODEL_CONFIGS]
  if unknown:
    raise ValueError(f"--configs: unknown {unknown}, expected some of {configs.MODEL_CONFIGS}")
  if args.repeats < 1 or args.warmup < 0:
    raise ValueError(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats}, "
                     f"{args.warmup}")
  if args.vocab_size is not None and args.vocab_size < 1:
    raise ValueError(f"--vocab_size must be positive, got {args.vocab_size}")
  if args.num_proposals is not None and args.num_proposals < 1:
    raise ValueError(f"--num_proposals must be positive, got {args.num_proposals}")
