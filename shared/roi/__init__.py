"""Tumour ROIs from predicted masks: crops and the classifier datasets (T1WI, T2WI, T1CE, T1WI+T2WI...)."""
