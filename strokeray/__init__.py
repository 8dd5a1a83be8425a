"""strokeray: stroke detection and lesion segmentation on brain CT at archive scale."""

__version__ = "0.1.0"
