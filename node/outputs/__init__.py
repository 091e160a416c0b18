"""DICOM outputs of an analysis: the three SEGs (lesions, lungs, lobes), the TID 1500 SR, the
Encapsulated PDF report, its summary capture and the overlay series (node.outputs.documents);
node.outputs.render draws the pictures, node.outputs.rounding rounds every number shown."""

from node.outputs.seg import build_seg, build_segs
from node.outputs.sr import build_sr

__all__ = ["build_seg", "build_segs", "build_sr"]
