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
rules (ScanningSequence, TR/TE, ImageType, contrast agent, acquisition time). ``roi_names`` lists the site's
names of the primary GTV (nasopharynx); ingestion uses them in place of its default ROI table. Node ROIs
(e.g. ``GTVnd``) are never primary. The generator writes the mapping at the site whose SeriesDescriptions are
local codes ("NPX AX SEQ-A" ...), where only the mapping (or the header rules) can tell T1 from T1CE.

Site quirks of the default three hospitals: hospital-a Siemens, explicit VR, nested ``export/`` tree,
InstanceNumber reversed; hospital-b GE 3 T, implicit VR, flat ``DICOM/I0000001`` files without extension,
SliceLocation omitted, some SeriesDescriptions empty or absent, RTSTRUCT without ContourImageSequence;
hospital-c Philips, JPEG 2000 lossless, RescaleSlope, local series codes + ``site_mapping.json``, contours on T2.
A fourth site (``--sites 4``) exports DICOM SEG instead of RTSTRUCT.
"""
