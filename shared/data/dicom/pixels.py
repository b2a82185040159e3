"""Pixel data of a sorted series, rescaled to scanner units with ``pydicom.pixels.apply_rescale``.

Decoders: pydicom's own (uncompressed, Deflate, RLE), pylibjpeg-openjpeg (JPEG 2000), pyjpegls
(JPEG-LS). Anything else (e.g. MPEG, JPEG baseline without a plugin) is rejected with a message naming
the file and the transfer syntax.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.pixels import apply_rescale, get_decoder
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from shared.data.dicom.header import InstanceHeader
from shared.errors import DicomError


def transfer_syntax(ds: pydicom.Dataset) -> str:
    """TransferSyntaxUID of ``ds``; for a dataset read without one (no file meta, or a meta without it),
    the uncompressed syntax of the encoding pydicom detected while reading it.

    PS3.5 10.1 / PS3.10 7.1: a stream without file meta is implicit VR little endian by default;
    pydicom also recognises explicit VR (and big endian) by peeking at the first element. Compressed
    pixel data cannot be stored without a transfer syntax, so the inferred syntax is always uncompressed.
    """
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return str(meta.TransferSyntaxUID)
    implicit, little = ds.original_encoding
    if implicit is None:
        return ""
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def with_transfer_syntax(ds: pydicom.Dataset) -> pydicom.Dataset:
    """Set the inferred TransferSyntaxUID on a dataset that lacks one, so that pydicom can decode its
    pixels (it refuses with "file_meta has no Transfer Syntax UID" otherwise). Returns ``ds``."""
    meta = getattr(ds, "file_meta", None)
    if meta is None or not meta.get("TransferSyntaxUID"):
        ts = transfer_syntax(ds)
        if ts:
            if meta is None:
                ds.file_meta = meta = FileMetaDataset()
            meta.TransferSyntaxUID = ts
    return ds


def check_transfer_syntax(h: InstanceHeader) -> None:
    """Raise DicomError when no installed decoder can read ``h``'s transfer syntax."""
    if not h.transfer_syntax:
        return  # not inferable (pydicom saw no element): decoding will say what is wrong
    uid = UID(h.transfer_syntax)
    name = uid.name if uid.is_valid else h.transfer_syntax
    try:
        decoder = get_decoder(uid)
        available = decoder.is_available
    except (NotImplementedError, ValueError):
        available = False
    if not available:
        raise DicomError(
            f"{h.path}: unsupported transfer syntax {name} ({h.transfer_syntax}); no installed pixel decoder. "
            "Expected uncompressed, RLE, JPEG 2000 or JPEG-LS. Re-export the series uncompressed."
        )


def read_slice(site_dir: Path, h: InstanceHeader, cache: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """One slice (H, W) float32 in rescaled units (slope/intercept applied).

    ``cache`` holds decoded multi-frame arrays by path so each file is decoded once.

    Raises:
        DicomError: unreadable, truncated or undecodable pixel data (message names the file).
    """
    check_transfer_syntax(h)
    if not h.has_pixels:
        raise DicomError(f"{h.path}: no pixel data (no BitsAllocated / PixelData); the slice is skipped")
    try:
        if h.frame >= 0 and cache is not None and h.path in cache:
            frames = cache[h.path]
        else:
            with warnings.catch_warnings():  # e.g. excess padding: harmless, decoded anyway
                warnings.simplefilter("ignore")
                ds = with_transfer_syntax(pydicom.dcmread(site_dir / h.path, force=True))
                if "PixelData" not in ds:
                    raise DicomError(f"{h.path}: no PixelData element; the slice is skipped")
                arr = ds.pixel_array
            if h.frame < 0:
                out = apply_rescale(arr, ds) if "RescaleSlope" in ds or "RescaleIntercept" in ds else arr
                out = np.asarray(out, dtype=np.float32)
                if out.shape != (h.rows, h.columns):
                    raise DicomError(
                        f"{h.path}: pixel array has shape {out.shape}; expected ({h.rows}, {h.columns}) "
                        "(single-frame grey-scale)"
                    )
                return out
            frames = arr if arr.ndim == 3 else arr[None]
            if cache is not None:
                cache[h.path] = frames
    except DicomError:
        raise
    except Exception as err:
        msg = str(err)
        kind = (
            "truncated pixel data"
            if "less than expected" in msg or "truncat" in msg.lower()
            else "unreadable pixel data"
        )
        raise DicomError(
            f"{h.path}: {kind} ({type(err).__name__}: {msg[:200]}); the slice is skipped"
        ) from None
    if h.frame >= frames.shape[0]:
        raise DicomError(f"{h.path}: frame {h.frame + 1} missing (file has {frames.shape[0]} frames)")
    out = frames[h.frame].astype(np.float32)
    slope = 1.0 if h.rescale_slope is None else h.rescale_slope
    intercept = 0.0 if h.rescale_intercept is None else h.rescale_intercept
    return out * np.float32(slope) + np.float32(intercept)
