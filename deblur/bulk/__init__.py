"""Bulk deblurring of image archives (folders, s3:// prefixes, .tar files) with Ray Data."""
from .job import ERRORS, SUMMARY, Options, run

__all__ = ["ERRORS", "SUMMARY", "Options", "run"]
