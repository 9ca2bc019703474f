"""``python -m densecap_jax.score``: log-likelihoods of phrases given the regions of images."""

from densecap_jax.regions import score_command


def main(argv=None):
  score_command.main(argv)


if __name__ == "__main__":
  main()
