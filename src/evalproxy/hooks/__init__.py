"""Built-in post-eval hooks, one module each."""
