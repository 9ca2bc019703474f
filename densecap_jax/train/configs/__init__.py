"""Training configs: ``get_config()`` functions returning ml_collections ``ConfigDict``s."""
