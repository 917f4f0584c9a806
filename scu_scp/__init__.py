"""The DICOM edge: SCP (C-ECHO, C-STORE), durable spool, study completion and C-STORE SCU.

Never imports torch, monai, celery or the other packages (see docs/architecture.md), so receiving a
study never depends on a model, a GPU or the broker.
"""
