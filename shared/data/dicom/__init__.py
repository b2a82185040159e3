"""DICOM ingestion with pydicom: header index, series grouping, classification, geometry, pixels, masks."""
