"""Built-in interceptors, one module each, named as in config."""
