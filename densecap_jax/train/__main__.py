"""``python -m densecap_jax.train``: train DenseCap (``densecap_jax.commands.train``)."""

from densecap_jax.commands import train as command

__doc__ = command.__doc__  # absl's --help shows the docstring of the module that runs

if __name__ == "__main__":
  command.run()
