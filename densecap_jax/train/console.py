"""``densecap-train`` (the console script) and ``train/train.py``: ``python -m densecap_jax.train``.

absl's ``--help`` lists the flags of the script that runs, and the flags of
the command are defined in ``densecap_jax.train.__main__``, a module to
these scripts; here they are made key flags of the running script.
"""

import sys

from absl import flags

from densecap_jax.train import __main__ as train_main


def run():
  """The train command, whose ``--help`` lists its flags whichever script starts it."""
  for flag in flags.FLAGS.get_flags_for_module(train_main.__name__):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  train_main.run()


if __name__ == "__main__":
  run()
