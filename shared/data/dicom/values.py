"""Tolerant conversions of DICOM element values (absent, empty, malformed -> None)."""

from __future__ import annotations

import math
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

#: ASCII value representations: decoded straight from the raw bytes (same in every byte order and
#: character set), which skips pydicom's per-element conversion, the main cost of header indexing.
_ASCII_VRS = {"CS", "DS", "IS", "UI", "TM", "DA", "DT", "AS"}
_MISSING = object()


def _fast(ds: Dataset, keyword: str) -> object:
    """Raw ASCII value as str ('' when empty), ``_MISSING`` when absent, None when not fast-decodable."""
    tag = tag_for_keyword(keyword)
    if tag is None or tag not in ds:
        return _MISSING
    try:
        elem = ds.get_item(tag)
    except Exception:
        return None
    if not isinstance(elem, RawDataElement):
        return None
    vr = elem.VR or dictionary_VR(tag)
    if vr not in _ASCII_VRS or elem.length == 0xFFFFFFFF:
        return None
    if elem.value is None:
        return ""
    return elem.value.decode("latin-1").strip(" \x00")


def text(ds: Dataset, keyword: str) -> str:
    fast = _fast(ds, keyword)
    if fast is _MISSING:
        return ""
    if isinstance(fast, str):
        return fast
    try:
        v = ds.get(keyword)
    except Exception:  # malformed value: treat as absent
        return ""
    if v is None:
        return ""
    if isinstance(v, list | tuple) or type(v).__name__ == "MultiValue":
        return "\\".join(str(x) for x in v)
    return str(v).strip()


def optional_text(ds: Dataset, keyword: str) -> str | None:
    """None when the tag is absent, "" when present but empty."""
    if tag_for_keyword(keyword) not in ds:
        return None
    return text(ds, keyword)


def multi(ds: Dataset, keyword: str) -> tuple[str, ...]:
    fast = _fast(ds, keyword)
    if fast is _MISSING:
        return ()
    if isinstance(fast, str):
        return tuple(v.strip().upper() for v in fast.split("\\") if v.strip())
    try:
        v = ds.get(keyword)
    except Exception:
        return ()
    if v is None or v == "":
        return ()
    if isinstance(v, str):
        return tuple(s.strip().upper() for s in v.split("\\") if s.strip())
    try:
        return tuple(str(x).strip().upper() for x in v if str(x).strip())
    except TypeError:
        return (str(v).strip().upper(),)


def number(ds: Dataset, keyword: str) -> float | None:
    fast = _fast(ds, keyword)
    if fast is _MISSING:
        return None
    if isinstance(fast, str):
        try:
            return float(fast.split("\\")[0]) if fast else None
        except ValueError:
            return None
    try:
        v = ds.get(keyword)
        if v is None or v == "":
            return None
        if not isinstance(v, str | int | float) and hasattr(v, "__len__"):
            v = v[0]
        return float(v)
    except Exception:
        return None


def integer(ds: Dataset, keyword: str) -> int | None:
    f = number(ds, keyword)
    return None if f is None or not math.isfinite(f) else int(round(f))


def floats(ds: Dataset, keyword: str, n: int) -> tuple[float, ...] | None:
    fast = _fast(ds, keyword)
    if fast is _MISSING:
        return None
    if isinstance(fast, str):
        try:
            out = tuple(float(v) for v in fast.split("\\"))
        except ValueError:
            return None
        return out if len(out) == n else None
    try:
        v = ds.get(keyword)
        if v is None or v == "":
            return None
        out = tuple(float(x) for x in v)
    except Exception:
        return None
    return out if len(out) == n else None


def dicom_time(value: Any) -> float | None:
    """'HHMMSS.ffffff' (or 'HH:MM:SS') -> seconds since midnight."""
    s = str(value or "").strip().replace(":", "")
    if not s:
        return None
    try:
        hh = int(s[0:2])
        mm = int(s[2:4]) if len(s) >= 4 else 0
        ss = float(s[4:]) if len(s) > 4 else 0.0
    except ValueError:
        return None
    return hh * 3600 + mm * 60 + ss
