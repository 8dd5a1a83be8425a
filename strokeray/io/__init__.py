"""Bytes in and out: DICOM decoding, PNG/JPG exports and mask images, pseudonymous keys.

Imports numpy and the imaging layer only; never torch or Ray.
"""
