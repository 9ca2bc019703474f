"""``python -m densecap_jax.index``: index a photo folder for search (``regions.index_command``)."""

from densecap_jax.regions import index_command


def main(argv=None):
  index_command.main(argv)


if __name__ == "__main__":
  main()
