"""lungnode's network side: DICOM in and out, state, jobs, CLI and config."""

__version__ = "0.1.0"
