"""Past one machine: orchestrator replicas on etcd.

``etcd`` talks to an etcd v3 cluster (several endpoints, one tried after another);
``store`` keeps the cluster state there behind the state-store interface of
``wyneos_core.store``; ``election`` campaigns on an etcd lease and hands out the fencing
token every decision is written under; ``replica`` wires both into ``wyneos serve`` and
registers the ``etcd`` backend with the store interface (``state.backend: etcd``) when this
package is imported.
"""

from wyneos_core.ha.etcd import EtcdClient, EtcdError, EtcdUnavailable, parse_store_url
from wyneos_core.ha.election import ElectionConfig, LeaderElector
from wyneos_core.ha.store import EtcdStateStore, FencedWrite
from wyneos_core.ha import replica as _replica  # noqa: F401  (registers the etcd store backend)

__all__ = ["ElectionConfig", "EtcdClient", "EtcdError", "EtcdStateStore", "EtcdUnavailable", "FencedWrite",
           "LeaderElector", "parse_store_url"]
