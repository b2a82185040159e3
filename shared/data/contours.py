"""Binary mask slice -> closed planar polygons (what an RTSTRUCT's CLOSED_PLANAR contours hold).

Used by ``nasofl-site predict`` to write the predicted tumour as RTSTRUCT and by the synthetic hospitals'
RTSTRUCT writer; the inverse (polygons -> mask, even-odd rule) is ``shared.data.dicom.rtstruct``.
"""

from __future__ import annotations

import numpy as np
from contourpy import LineType, contour_generator


def slice_polygons(mask2d: np.ndarray) -> list[np.ndarray]:
    """Closed polygons of a 2-D mask ``(H, W)``: each float ``(N, 2)`` as (column, row) pixel coordinates, the
    first point not repeated; the iso-line at 0.5 of the zero-padded mask, so a polygon hugs its pixels' centres."""
    padded = np.pad(mask2d.astype(np.float64), 1)
    gen = contour_generator(z=padded, line_type=LineType.Separate)
    polys = []
    for line in gen.lines(0.5):
        pts = np.asarray(line, dtype=np.float64) - 1.0
        if len(pts) > 1 and np.allclose(pts[0], pts[-1]):
            pts = pts[:-1]
        if len(pts) >= 3:
            polys.append(pts)
    return polys
