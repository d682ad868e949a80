"""Stages 3-4: Geom-Erasing training, Safe Latent Diffusion, Latent-CLIP, evaluation."""
