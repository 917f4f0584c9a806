"""Tests for the DICOM edge (scu_scp)."""
