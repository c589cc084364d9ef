"""Publish a desired state to etcd (`sozu fleet push`) and show what a push would change.

A push compares the state's keys (`fleet_layout.state_to_kv`) with what etcd holds, and
writes only the differences: puts of new or changed objects and, when it replaces rather
than merges, deletes of objects the state no longer has. When everything fits in one
transaction (etcd 3.4: 128 operations, 1.5 MiB), it is one transaction that also sets the
generation key complete. Otherwise the generation key is first set to `complete: false`
(instances stop applying), the changes are written in batches, and a last transaction flips
the generation key to `complete: true`: instances apply only that complete generation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from sozu.command.fleet_layout import (
    GENERATION,
    STATE_DIR,
    Generation,
    LayoutError,
    decode_generation,
    encode_generation,
    relative_kvs,
    state_to_kv,
)
from sozu.command.state import ConfigState
from sozu.supervisor.etcd_client import MAX_TXN_OPS, Delete, EtcdClient, Operation, Put

# Bytes of keys and values per transaction (etcd's default request limit is 1.5 MiB).
MAX_TXN_BYTES: Final = 1_000_000


@dataclass(frozen=True, slots=True)
class PushPlan:
    """What a push changes, keys relative to the prefix."""

    puts: dict[str, bytes]
    deletes: list[str]
    generation: int

    @property
    def empty(self) -> bool:
        return not self.puts and not self.deletes


@dataclass(frozen=True, slots=True)
class PushResult:
    plan: PushPlan
    transactions: int
    revision: int


async def plan_push(
    client: EtcdClient, prefix: str, state: ConfigState, *, merge: bool = False
) -> PushPlan:
    """The changes that make etcd's desired state `state` (`merge`: keep other objects)."""
    _, pairs = await client.range_prefix((prefix + STATE_DIR).encode())
    current = relative_kvs(prefix, pairs)
    previous = 0
    raw = current.pop(GENERATION, None)
    if raw is not None:
        try:
            previous = decode_generation(GENERATION, raw).generation
        except LayoutError:
            previous = 0
    wanted = state_to_kv(state)
    puts = {key: value for key, value in sorted(wanted.items()) if current.get(key) != value}
    deletes = [] if merge else sorted(key for key in current if key not in wanted)
    return PushPlan(puts=puts, deletes=deletes, generation=previous + 1)


def _batches(prefix: str, plan: PushPlan, room: int) -> list[list[Operation]]:
    """The plan's operations in transactions of at most `room` operations and MAX_TXN_BYTES."""
    operations: list[Operation] = [Delete((prefix + key).encode()) for key in plan.deletes]
    operations += [Put((prefix + key).encode(), value) for key, value in plan.puts.items()]
    batches: list[list[Operation]] = [[]]
    size = 0
    for operation in operations:
        weight = len(operation.key) + (len(operation.value) if isinstance(operation, Put) else 0)
        if len(batches[-1]) >= room or (batches[-1] and size + weight > MAX_TXN_BYTES):
            batches.append([])
            size = 0
        batches[-1].append(operation)
        size += weight
    return batches


async def push(client: EtcdClient, prefix: str, plan: PushPlan) -> PushResult:
    """Write `plan`; the generation key is flipped to complete last."""
    generation_key = (prefix + GENERATION).encode()

    def generation(complete: bool) -> Put:
        value = encode_generation(Generation(generation=plan.generation, complete=complete))
        return Put(generation_key, value)

    batches = _batches(prefix, plan, MAX_TXN_OPS - 1)
    if len(batches) == 1:
        _, revision = await client.txn([*batches[0], generation(True)])
        return PushResult(plan, 1, revision)
    await client.txn([generation(False)])
    for batch in batches:
        await client.txn(batch)
    _, revision = await client.txn([generation(True)])
    return PushResult(plan, len(batches) + 2, revision)
