"""Synthetic nasopharynx cohort: realistic DICOM for any number of virtual hospitals.

Entry points: ``cohort.generate_cohort(out_dir, CohortConfig.preset("default"))`` writes site folders and
``_truth``; ``sampling.synthesize_patient`` samples one patient in memory (used by ``calibration``).

``site_mapping.json`` (optional, in a site folder; written by this generator at one site, read by ingestion)::

    {
      "series": {"<regex on SeriesDescription>": "t1" | "t2" | "t1ce" | "ignore", ...},
      "roi_names": ["<regex on ROIName of the primary tumour>", ...]
    }

Regexes are Python ``re`` patterns matched with ``re.search``, case-sensitive as written; ``series`` entries
are tried in file order and the first match wins; a series with no matching entry falls back to the header
rules (ScanningSequence, TR/TE, ImageType, contrast agent, acquisition time). ``roi_names`` adds site names
for the primary GTV (nasopharynx) to the default table; node ROIs (e.g. ``GTVnd``) are never primary.
"""
