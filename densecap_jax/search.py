"""``python -m densecap_jax.search``: rank an index's images by a phrase."""

from densecap_jax.regions import search_command


def main(argv=None):
  search_command.main(argv)


if __name__ == "__main__":
  main()
