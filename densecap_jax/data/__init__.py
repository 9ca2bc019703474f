"""Data: preprocessing, synthetic scenes, loaders and shape buckets."""
