"""metalearn: meta-learning experiments on JAX, haiku, optax, Hydra and W&B."""
