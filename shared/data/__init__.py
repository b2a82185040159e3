"""Hospital data: DICOM ingestion, the synthetic cohort, cache, splits and training datasets."""
