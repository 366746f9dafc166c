"""Loading data (npz, csv/parquet, text), seeded splits and built-in example tasks."""

from presso.data.dataset import Dataset, Split, split
from presso.data.sources import from_texts, load_data

__all__ = ["Dataset", "Split", "from_texts", "load_data", "split"]
