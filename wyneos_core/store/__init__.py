"""The state store: decisions, action lifecycle, node membership and tick history.

``ClusterStateStore`` is the interface every backend implements (``api``, with the
registry of backends); ``StateStore`` is the embedded default, one SQLite file in WAL
mode (``sqlite``, its rows in ``rows``, its service-mode and trust tables in
``sqlite_service`` and ``sqlite_trust``). ``open_state_store`` opens the backend the
config's ``state.backend`` names: SQLite registers itself when this package is imported,
etcd (replicas past one machine) when ``wyneos_core.ha`` is, as the CLI and the service do.
"""

from wyneos_core.store.api import ClusterStateStore, StoreError, backends, open_state_store, register_backend
from wyneos_core.store.rows import encode_each
from wyneos_core.store.sqlite import SCHEMA_VERSION, WAL_CHECKPOINT_PAGES, StateStore
from wyneos_core.store.sqlite_trust import TrustChunkTable

__all__ = ["ClusterStateStore", "StateStore", "StoreError", "SCHEMA_VERSION", "TrustChunkTable",
           "WAL_CHECKPOINT_PAGES", "backends", "encode_each", "open_state_store", "register_backend"]
