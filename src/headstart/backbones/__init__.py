"""Pretrained backbones: the registry, timm image backbones, text encoders, word vectors, preprocessing, fetching."""
