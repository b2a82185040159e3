"""``nasofl-site predict``: a trained bundle on a hospital's next patients (contours, probabilities, report)."""
