"""The method in plain PyTorch: the implicit model, its losses (paper Eq. 1–8) and step, the grounding models,
cluster-aware batching, the sentence encoder. No Ray, no DeepSpeed: each runs in a test without either."""
