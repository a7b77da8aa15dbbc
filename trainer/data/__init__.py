"""The dataset layer: every stage reads photos through here (sources, checks, duplicates, split)."""
from .errors import DataError
from .scan import Dataset, load_dataset
from .split import Split, make_split

__all__ = ["DataError", "Dataset", "load_dataset", "Split", "make_split"]
