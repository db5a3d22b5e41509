"""A real two-node Ray cluster on this machine (Ray's own cluster utilities: a head and a second
node, each a raylet of its own, as `ray start --head` + `ray start --address` make them), and the
processes of its actors, found by the title Ray gives them (`ray::<Class>.<method>`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Small, so that two nodes fit beside the other tests: one CPU each, a small object store.
NODE = {"num_cpus": 1, "object_store_memory": 100 * 2**20}


@contextmanager
def two_node_cluster() -> Iterator[tuple[str, list[str]]]:
    """(the head's address for `ray.init`, the two node ids), shut down after use."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True,
                      head_node_args={**NODE, "include_dashboard": False})
    try:
        second = cluster.add_node(**NODE)
        cluster.wait_for_nodes()
        yield cluster.address, [cluster.head_node.node_id, second.node_id]
    finally:
        cluster.shutdown()


def actor_processes(title: str) -> list[int]:
    """The ids of this test's descendant processes whose title starts with `title` (Ray
    rewrites a worker's command line to `ray::<Class>.<method running>`)."""
    parents = {}
    titles = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            titles[int(entry.name)] = (entry / "cmdline").read_bytes()
        except OSError:  # it ended meanwhile
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    mine = {os.getpid()}
    found = []
    for pid in sorted(parents):
        chain, parent = [], pid
        while parent in parents and parent not in mine and parent > 1:
            chain.append(parent)
            parent = parents[parent]
        if parent in mine:
            mine.update(chain)
            if titles[pid].startswith(title.encode()):
                found.append(pid)
    return found
