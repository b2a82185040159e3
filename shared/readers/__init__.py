"""Reader studies: models against clinicians (AUC with DeLong CI, paired DeLong test, ROC with readers' points)."""

from shared.readers.compare import ReaderTable, compare, load_reader_csv, run_comparison

__all__ = ["ReaderTable", "compare", "load_reader_csv", "run_comparison"]
