"""Flax models: UNet, VAE, text encoders, ImageBind, CIM, AudioSep, I3D."""
