"""Training: the loop, the recipes (Transfer and its backends), the solved head, losses, checkpoints, the feature cache, distributed runs."""
