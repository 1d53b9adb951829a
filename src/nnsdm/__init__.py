"""nnsdm: signed-distance-map multi-task training for nnU-Net v2 (FLARE21 "nnUNet with Signed Distance Map")."""

__version__ = "0.1.0"
