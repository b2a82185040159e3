"""Tolerant conversions of DICOM element values (absent, empty, malformed -> None)."""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset


def text(ds: Dataset, keyword: str) -> str:
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
    if keyword not in ds:
        return None
    return text(ds, keyword)


def multi(ds: Dataset, keyword: str) -> tuple[str, ...]:
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
    return None if f is None else int(round(f))


def floats(ds: Dataset, keyword: str, n: int) -> tuple[float, ...] | None:
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
