"""TFDS builders writing ArrayRecord without TensorFlow (Tensor features only)."""
