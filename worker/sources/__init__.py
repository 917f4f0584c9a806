"""Studies pulled from DICOMweb sources: WADO-RS on demand, and QIDO-RS polling."""
