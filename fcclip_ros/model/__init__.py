"""The FC-CLIP network in plain PyTorch + open_clip: one module per part of the paper's model."""
