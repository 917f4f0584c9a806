"""Imaging and AI: series -> volume, pipelines, findings and the DICOM writers.

No networking, no task queue (see docs/architecture.md): a pipeline runs on a folder of files.
"""
