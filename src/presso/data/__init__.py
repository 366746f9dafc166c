"""Loading data (npz, csv/parquet, text), seeded splits and built-in example tasks."""

from presso.data.dataset import Dataset, Split, split
from presso.data.resolve import load_data
from presso.data.sources import from_texts

__all__ = ["Dataset", "Split", "from_texts", "load_data", "split"]
