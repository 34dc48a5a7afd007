"""Split a labelled training set across federated clients.

The splitting itself is done by flwr-datasets partitioners (all schemes but
"pathological" with its default deterministic class assignment, see
``schemes._pathological_parts``); this package adds what they lack for reproducible experiments:

* an optional long-tail step (exponential class profile, applied before partitioning);
* a seeded shuffle of the data before partitioning, so every scheme is seeded;
* bounded, deterministic retries where a partitioner may fail (Dirichlet);
* checks that turn impossible settings into one-line ``UserError`` messages;
* class-count tables (text, CSV, heatmap) to inspect a partition.

Every partition is returned as sorted ``int64`` indices into the original label array.

The package is split by concern: ``spec.py`` (the :class:`PartitionSpec`, its checks, the long
tail), ``schemes.py`` (the scheme runners), ``store.py`` (:func:`partition_indices`: the schemes'
result, kept on disk so each process of a run need not partition again -- nor import flwr-datasets)
and ``tables.py`` (the class-count tables); their public names are exported here.
"""

from semanticfl.data.partition.spec import CLASS_ASSIGNMENTS, SCHEMES, PartitionSpec, long_tail_indices
from semanticfl.data.partition.store import partition_indices
from semanticfl.data.partition.tables import (
    class_count_table,
    format_count_table,
    save_count_table_csv,
    save_partition_heatmap,
)

__all__ = [
    "CLASS_ASSIGNMENTS",
    "SCHEMES",
    "PartitionSpec",
    "class_count_table",
    "format_count_table",
    "long_tail_indices",
    "partition_indices",
    "save_count_table_csv",
    "save_partition_heatmap",
]
