"""Bounds on what one site's training reply may weigh in a round: its update's size and its example count.

:mod:`server.update_check` says whether an update CAN be aggregated (keys, shapes, finite values); this module
says whether it is plausible next to the other sites' updates of the same round, so that one hostile or broken
site can neither blow up the global model nor make its own update the global model.

- **Update norm.** A site's *update delta* is ``update - global`` (the arrays it returned minus the global arrays
  sent that round), flattened over every floating array (weights and normalisation statistics; integer counters
  such as ``num_batches_tracked`` are left out), in float64. Its L2 norm is compared with the median of the
  round's delta norms: a delta above ``update-norm-factor x median`` is rejected. The median needs at least 3
  updates to single out one outlier (with 2 it is their mean, and a huge delta is at most 2 x that mean), so the
  check runs from 3 updates on; with 2 sites use ``min-sites`` and a robust strategy (``fedmedian``) instead.
  A median of 0 (most sites sent the global model back unchanged) bounds nothing and is logged.
- **Example count.** ``num-examples`` weights FedAvg/FedProx/FedAdam/FedAvgM. A site may claim at most what its own
  ``query.info`` / ``query.roi`` counts allow: training patients x slices per patient x local epochs
  (:func:`example_cap`); a larger claim is rejected.

Pure numpy: no Flower here.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

Arrays = Mapping[str, np.ndarray]


def delta_norm(global_arrays: Arrays, update: Arrays) -> float:
    """L2 norm of ``update - global_arrays`` over the floating arrays (float64; integer arrays left out)."""
    total = 0.0
    for name, ref in global_arrays.items():
        ref_arr = np.asarray(ref)
        if not np.issubdtype(ref_arr.dtype, np.floating):
            continue
        diff = np.asarray(update[name], dtype=np.float64) - ref_arr.astype(np.float64)
        total += float(np.dot(diff.ravel(), diff.ravel()))
    return float(np.sqrt(total))


def norm_outliers(norms: Mapping[str, float], factor: float, min_updates: int = 3) -> dict[str, str]:
    """{site: why rejected} for the sites whose delta norm exceeds ``factor`` x the median of ``norms``.

    ``norms``: site -> delta norm of this round's checked updates. Nothing is rejected with fewer than
    ``min_updates`` updates or a median of 0 (see the module docstring).
    """
    if len(norms) < min_updates:
        return {}
    median = float(np.median(list(norms.values())))
    if median <= 0.0:
        return {}
    bound = factor * median
    return {
        site: (
            f"update norm {norm:.4g} (update minus global, L2) is {norm / median:.3g} x the round's median "
            f"{median:.4g}, above update-norm-factor={factor:g}"
        )
        for site, norm in sorted(norms.items())
        if norm > bound
    }


def example_cap(patients_train: float, slices_per_patient: int, epochs: int) -> int:
    """The most training examples (slices x epochs) a site with ``patients_train`` training patients can see."""
    return int(max(patients_train, 0)) * slices_per_patient * epochs


def examples_problem(claimed: float, cap: int | None) -> str | None:
    """Why a claimed ``num-examples`` is above the site's reported counts, or None (None cap: no bound known)."""
    if cap is None or claimed <= cap:
        return None
    return (
        f"claims num-examples={claimed:.6g}, above the {cap} its own query.info/query.roi counts allow "
        "(training patients x slices per patient x local epochs)"
    )
