"""``python -m densecap_jax.train.pretrain``: region-attribute pretraining
(``densecap_jax.commands.pretrain``)."""

from densecap_jax.commands import pretrain as command

__doc__ = command.__doc__  # absl's --help shows the docstring of the module that runs

if __name__ == "__main__":
  command.run()
