"""The stores' names under this module's earlier name, every public name it had, for scripts
written against it; the stores live in scalselect.stores."""

from .stores import (  # noqa: F401
    LOCK,
    MANIFEST,
    PART,
    PROGRESS,
    SKIPPED,
    STORE_FORMAT,
    STORE_VERSION,
    ReadFailure,
    RowSource,
    StoreWriter,
    check_ids,
    check_same_settings,
    damaged_parts,
    load_representations,
    lock_store,
    open_rows,
    part_shards,
    read_manifest,
    read_sidecar,
    read_skipped,
    read_store,
    reopen_store,
    write_store,
)
from .stores.rows import NpyFile  # noqa: F401
from .stores.vector_store import SIDECAR  # noqa: F401
