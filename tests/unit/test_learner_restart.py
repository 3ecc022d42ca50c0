"""The pieces of a learner restart that need no cluster: the weight store's generations, how a failed
torch.distributed collective is told apart, and the config fields (tests/ray/test_learner_restart_ray.py runs
the real thing)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from distrl.config import ConfigError, load_config
from distrl.runtime.common import RunPaths
from distrl.runtime.ray_learners import LearnerGroup, collective_timeout_s, failed_in_collective
from distrl.runtime.weights import WeightStore


def test_a_restarted_learner_may_publish_an_older_version_and_a_dead_ones_late_publish_is_ignored():
    store = WeightStore()
    assert store.get_if_changed(-1) is None  # nothing published yet
    store.publish(5, "w5")
    assert store.get_if_changed(-1) == (5, "w5") and store.get_if_changed(5) is None
    with pytest.raises(ValueError, match="older"):
        store.publish(4, "w4")  # the same learner going back: a bug
    assert store.publish(3, "w3", generation=1)  # restored from the checkpoint at version 3
    assert store.get_if_changed(5) == (3, "w3")  # actors on the lost updates' weights move back
    assert not store.publish(6, "w6", generation=0)  # the dead learner's last call, arriving late
    assert store.get() == (3, "w3")
    store.publish(4, "w4", generation=1)
    assert store.get_if_changed(3) == (4, "w4")


def test_a_collective_failure_is_told_apart_from_a_learner_error():
    assert not dist.is_initialized()
    with pytest.raises(Exception) as collective:
        dist.all_reduce(torch.ones(1))  # raises inside torch.distributed (no group here)
    assert failed_in_collective(collective.value)
    with pytest.raises(RuntimeError) as own:
        raise RuntimeError("a bug in the loss")
    assert not failed_in_collective(own.value)


def test_learner_restart_settings_are_validated():
    cfg = load_config(None, ["runtime.learner_stuck_timeout_s=40"])
    assert cfg.runtime.learner_restarts == 3 and collective_timeout_s(cfg) == 20.0
    assert collective_timeout_s(load_config(None, ["runtime.learner_stuck_timeout_s=0"])) == 1800.0
    for bad in ("runtime.learner_restarts=-1", "runtime.learner_stuck_timeout_s=-5"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(None, [bad])


def test_a_learner_past_its_restart_limit_fails_the_run_with_its_rank_named(tmp_path):
    cfg = load_config(None, ["runtime.learner_restarts=1"])
    group = LearnerGroup(cfg, None, [], None, [], {"num_cpus": 1}, RunPaths(tmp_path), lambda refs, what: None)
    group.restarts = {1: 1}  # learner 1 was restarted once already; no Ray call happens before the check
    with pytest.raises(RuntimeError, match=r"learner 1 failed 2 times \(limit runtime.learner_restarts=1\).*boom"):
        group._recover({1: RuntimeError("boom")})


def _listening(port: int) -> list[str]:
    """The local addresses (hex, as /proc/net/tcp{,6} writes them) that listen on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            addr, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.append(addr)
    return found


def test_the_learner_groups_store_listens_on_the_node_address_only(monkeypatch):
    """Two learners meet through rank 0's TCPStore; it must not listen on every interface (a TCPStore binds its
    own port to all of them), only on the node's address: 127.0.0.1 on a local cluster."""
    import threading

    from distrl.runtime import ray_learners

    monkeypatch.setattr(ray_learners.ray.util, "get_node_ip_address", lambda: "127.0.0.1")
    cfg = load_config(None, ["runtime.placement_timeout_s=20"])
    peers = [ray_learners.RayLearner(cfg, None, [], None, rank, 2) for rank in (0, 1)]
    where = peers[0].rendezvous_address()
    stores: dict[int, object] = {}
    threads = [threading.Thread(target=lambda p=p: stores.__setitem__(p.rank, p._join_store(where))) for p in peers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert set(stores) == {0, 1}
    stores[1].set("hello", "from rank 1")
    assert stores[0].get("hello") == b"from rank 1"
    assert _listening(where[1]) == ["0100007F"]  # 127.0.0.1, and nothing on 0.0.0.0 or ::
    for p in peers:
        p.close()
