"""The HTML report, its figures, the model card, TensorBoard logging."""
