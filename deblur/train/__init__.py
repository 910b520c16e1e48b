"""Training: the GAN step (pure torch), the per-worker loop and the TorchTrainer builder."""
