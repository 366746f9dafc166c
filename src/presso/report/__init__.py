"""Report data model and its JSON / HTML / terminal renderings."""

from presso.report.schema import Report

__all__ = ["Report"]
