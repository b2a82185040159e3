"""Explanations of classifier decisions (Grad-CAM) and their summary inside the tumour."""
