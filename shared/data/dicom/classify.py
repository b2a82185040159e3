"""Sequence classification (t1 / t2 / t1ce) from headers alone; SeriesDescription is optional.

Order of evidence: site mapping > ImageType / ScanningSequence exclusions (quantitative maps too) > Enhanced MR
AcquisitionContrast > TR/TE rules > description tokens. Post-contrast: ContrastBolusAgent (may be
empty or absent), description tokens, then acquisition time order inside the study (a T1 acquired after
another T1 of the study is a t1ce). Every decision keeps a reason string for the report.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from shared.data.dicom.series import SeriesGroup
from shared.data.mapping import SiteMapping
from shared.data.settings import IngestSettings

EXCLUDED_IMAGE_TYPES = {
    "LOCALIZER": "localiser",
    "MPR": "MPR reformat",
    "CSA MPR": "MPR reformat",
    "REFORMATTED": "reformat",
    "MIP": "MIP",
    "PROJECTION IMAGE": "projection image",
    "DIFFUSION": "diffusion",
    "ADC": "ADC map",
    "EADC": "ADC map",
    "TRACEW": "diffusion trace",
    "FA": "FA map",
    "MOSAIC": "mosaic (DWI/fMRI)",
    "SUBTRACTION": "subtraction",
    "SUB": "subtraction",
    "SCREEN SAVE": "screen capture",
}
_L, _R = r"(?<![a-z0-9])", r"(?![a-z0-9])"  # token boundaries where "_" separates words
LOCALISER_RX = re.compile(rf"locali[sz]er|scout|survey|pilot|3[\s_-]?plane|{_L}loc{_R}", re.IGNORECASE)
DWI_RX = re.compile(rf"{_L}dwi|diff|{_L}adc{_R}|trace|{_L}b\d{{3,4}}{_R}|{_L}epi{_R}", re.IGNORECASE)
#: Quantitative maps (relaxometry): T1 / T2 values in ms, not a weighted image.
QMAP_RX = re.compile(
    rf"{_L}(t1|t2|t2\*|r1|r2)[\s_-]?map{_R}|relaxometry|{_L}molli{_R}|{_L}(shmolli|qmap|mapit){_R}",
    re.IGNORECASE,
)
QMAP_IMAGE_TYPES = {"T1 MAP", "T2 MAP", "T1MAP", "T2MAP", "T2 STAR MAP", "R1", "R2", "QMAP", "MAP"}
FLAIR_RX = re.compile(r"flair|dark[\s_-]?fluid", re.IGNORECASE)
CONTRAST_RX = re.compile(
    rf"\+\s*c(?![a-z])|c\s*\+|\+\s*gd|{_L}(post|gd|gad\w*|enh\w*|ce|t1\s*ce|t1c|contrast){_R}|增强",
    re.IGNORECASE,
)
PRE_CONTRAST_RX = re.compile(
    r"(pre|non|without|w/o|no)[\s_-]?(contrast|gd|gad\w*|c(?![a-z]))|平扫", re.IGNORECASE
)
T1_RX = re.compile(r"t1|spgr|vibe|lava|mprage|bravo|flash|fl3d|thrive", re.IGNORECASE)
T2_RX = re.compile(r"t2|stir", re.IGNORECASE)
NO_AGENT = {"", "NONE", "NO", "N/A", "NA", "-", "0"}


@dataclass(frozen=True)
class Classification:
    """sequence: t1 / t2 / t1ce / None (weighting unknown). excluded: '' when usable, else why."""

    sequence: str | None
    excluded: str
    reason: str
    post_contrast: bool = False
    derived: bool = False
    mapped: bool = False

    @property
    def usable(self) -> bool:
        return not self.excluded and self.sequence is not None


def _texts(g: SeriesGroup) -> tuple[str, str, str]:
    f = g.first
    return f.series_description, f.protocol_name, f.sequence_name


def _weighting_from_timing(g: SeriesGroup, s: IngestSettings) -> tuple[str | None, str]:
    f = g.first
    seq = set(f.scanning_sequence)
    tr, te, ti = f.tr, f.te, f.ti
    if f.acquisition_contrast in ("T1", "T2"):
        return f.acquisition_contrast.lower(), f"AcquisitionContrast {f.acquisition_contrast}"
    if tr is None or te is None:
        return None, "TR/TE absent"
    timing = f"TR {tr:g} / TE {te:g} ms"
    if "GR" in seq and "SE" not in seq and tr < s.gre_t1_max_tr_ms:
        return "t1", f"GRE with {timing} (TR < {s.gre_t1_max_tr_ms:g} ms: 3D T1)"
    if "IR" in seq and ti is not None and ti < 300 and te > 30:
        return "t2", f"STIR ({timing}, TI {ti:g})"
    if tr < s.t1_max_tr_ms and te < s.t1_max_te_ms:
        return "t1", f"{timing} (T1 rule: TR < {s.t1_max_tr_ms:g}, TE < {s.t1_max_te_ms:g})"
    if tr > s.t2_min_tr_ms and te > s.t2_min_te_ms:
        return "t2", f"{timing} (T2 rule: TR > {s.t2_min_tr_ms:g}, TE > {s.t2_min_te_ms:g})"
    return None, f"{timing} fits neither rule"


def _post_contrast(g: SeriesGroup) -> tuple[bool, str]:
    agent = g.first.contrast_agent
    if agent is not None and agent.strip().upper() not in NO_AGENT:
        return True, "ContrastBolusAgent filled"
    for t in _texts(g):
        if PRE_CONTRAST_RX.search(t or ""):
            continue
        m = CONTRAST_RX.search(t or "")
        if m:
            return True, f"description token {m.group(0).strip()!r}"
    return False, ""


def classify_series(
    g: SeriesGroup, settings: IngestSettings, mapping: SiteMapping | None = None
) -> Classification:
    """Classify one homogeneous series part from its headers (see module docstring)."""
    f = g.first
    image_type = set(f.image_type)
    derived = "DERIVED" in image_type or "SECONDARY" in image_type
    post, post_reason = _post_contrast(g)
    desc = " ".join(t for t in _texts(g) if t)
    if mapping is not None:
        hit = mapping.classify(f.series_description, f.protocol_name)
        if hit is not None:
            target, pattern = hit
            if target == "ignore":
                return Classification(
                    None, f"site_mapping: {pattern!r} -> ignore", "site mapping", post, derived, True
                )
            return Classification(
                target, "", f"site_mapping: {pattern!r} -> {target}", target == "t1ce", derived, True
            )
    for token, what in EXCLUDED_IMAGE_TYPES.items():
        if token in image_type:
            weighting, why = _weighting_from_timing(g, settings)
            seq = "t1ce" if weighting == "t1" and post else weighting
            return Classification(seq, f"ImageType {'/'.join(f.image_type)}: {what}", why, post, derived)
    if "EP" in set(f.scanning_sequence):
        return Classification(None, "ScanningSequence EP: diffusion / EPI", "EP", post, derived)
    if LOCALISER_RX.search(desc):
        return Classification(None, "localiser (description)", "description", post, derived)
    if DWI_RX.search(desc):
        return Classification(None, "diffusion (description)", "description", post, derived)
    qmap = sorted(image_type & QMAP_IMAGE_TYPES)
    if qmap or QMAP_RX.search(desc):
        why = f"ImageType {qmap[0]}" if qmap else "description"
        return Classification(None, f"quantitative map ({why}), not a weighted image", why, post, derived)
    long_ti_ir = "IR" in f.scanning_sequence and (f.ti or 0) > 1500 and (f.te is None or f.te > 30)
    if FLAIR_RX.search(desc) or long_ti_ir:
        return Classification(None, "FLAIR (not used)", "description / TI", post, derived)
    weighting, why = _weighting_from_timing(g, settings)
    has1, has2 = bool(T1_RX.search(desc)), bool(T2_RX.search(desc))
    token = "t1" if has1 and not has2 else "t2" if has2 and not has1 else None
    if weighting is None:
        if token is None:
            return Classification(
                None, f"weighting unknown: {why}, no t1/t2 description token", why, post, derived
            )
        weighting, why = token, f"{why}; description token {token}"
    elif token is not None and token != weighting:
        why += f" (description suggests {token}; timing rule kept)"
    seq = weighting
    if weighting == "t1" and post:
        seq, why = "t1ce", f"{why}; post-contrast: {post_reason}"
    elif post:
        why += f"; {post_reason} (ignored for {weighting})"
    if derived:
        why += "; DERIVED/SECONDARY (used only if no ORIGINAL series of this class)"
    return Classification(seq, "", why, post, derived)


def apply_time_order(
    items: list[tuple[SeriesGroup, Classification]],
) -> list[tuple[SeriesGroup, Classification]]:
    """Within one study: a T1 acquired after another T1 becomes t1ce.

    When every T1 was flagged post-contrast by ContrastBolusAgent alone (agent typed on all series), the
    earliest one is taken back to t1. Mapped series are left alone.
    """
    t1_like = [
        (g, c)
        for g, c in items
        if c.usable and not c.mapped and c.sequence in ("t1", "t1ce") and "description token" not in c.reason
    ]
    timed = [(g, c) for g, c in t1_like if g.start_time is not None]
    if len(timed) < 2:
        return items
    timed.sort(key=lambda gc: (gc[0].start_time, gc[0].key))
    first_g, first_c = timed[0]
    updates: dict[str, Classification] = {}
    if first_c.sequence == "t1ce" and all(c.sequence == "t1ce" for _, c in timed):
        updates[first_g.key] = replace(
            first_c, sequence="t1", reason=first_c.reason + "; earliest T1 of the study, so pre-contrast"
        )
    for g, c in timed[1:]:
        if c.sequence == "t1" and g.start_time > first_g.start_time:
            updates[g.key] = replace(
                c,
                sequence="t1ce",
                post_contrast=True,
                reason=c.reason + "; acquired after another T1 of the study",
            )
    return [(g, updates.get(g.key, c)) for g, c in items]


def choose(candidates: list[tuple[SeriesGroup, Classification]]) -> tuple[SeriesGroup, str]:
    """Deterministic choice among series of one class: ORIGINAL over DERIVED, axial, most slices, UID."""
    ranked = sorted(
        candidates,
        key=lambda gc: (gc[1].derived, not gc[0].is_axial, -gc[0].n_slices, gc[0].key),
    )
    chosen = ranked[0][0]
    if len(ranked) == 1:
        return chosen, ""
    others = ", ".join(g.label() for g, _ in ranked[1:])
    return (
        chosen,
        f"{len(ranked)} candidate series; chose {chosen.label()} (ORIGINAL, axial, most slices); not used: {others}",
    )
