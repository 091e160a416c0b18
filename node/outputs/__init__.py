"""DICOM outputs of an analysis: the Segmentation (SEG) and the TID 1500 Structured Report."""

from node.outputs.seg import build_seg
from node.outputs.sr import build_sr

__all__ = ["build_seg", "build_sr"]
