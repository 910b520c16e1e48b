"""Bulk deblurring of image and video archives (folders, s3:// prefixes, .tar files) with Ray Data."""

from .job import ERRORS, SHARP_BELOW, SUMMARY, Options, deblur_archive

__all__ = ["ERRORS", "SHARP_BELOW", "SUMMARY", "Options", "deblur_archive"]
