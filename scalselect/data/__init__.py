"""Training-pool input/output."""

from scalselect.data.pools import Pool, read_pool, subset_name, write_subset

__all__ = ["Pool", "read_pool", "subset_name", "write_subset"]
