"""Lung, lobe and lesion segmentation on HU arrays. Knows nothing of DICOM or the network."""
