"""Follow the desired state a fleet keeps in etcd (`[etcd]`): read, converge, watch, repeat.

On start and after every reconnection the whole `<prefix>/state/` range is read at one
revision, the target state is built from it (`fleet_layout`), and `diff(current, target)` is
applied as one job of the mutation queue, the path CLI commands take. Then the prefix is
watched from the next revision; each response of the watch (whole revisions) is applied as one
change. A compacted revision means a full read again; etcd unreachable means the instance
keeps serving what it has and retries with doubling back-off. A desired state that cannot be
applied is refused whole: the state stays as it was, and the refusal (key, revision, why) is
logged, shown in `sozu status` and counted. See LIFECYCLE-fleet.md.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import trio
from prometheus_client.core import Metric

from sozu.command.config_schema import EtcdSection
from sozu.command.fleet_layout import (
    GENERATION,
    INSTANCES_DIR,
    LayoutError,
    build_target,
    decode_generation,
    normalize_prefix,
    relative_kvs,
)
from sozu.command.responses import FleetPhase, FleetRefusal, FleetStatus
from sozu.command.state import ConfigState
from sozu.command.state_errors import StateError
from sozu.supervisor.etcd_client import Compacted, EtcdClient, EtcdError, EtcdUnavailable, Event
from sozu.supervisor.mutations import Answering, BindRefused, Mutations

log = logging.getLogger("sozu.supervisor.fleet")

# Seconds: the lease of an instance's report (its key goes this long after the instance), and
# how often the report is compared with the last one written.
REPORT_LEASE_TTL = 10
REPORT_POLL = 0.25


def client_for(etcd: EtcdSection) -> EtcdClient:
    return EtcdClient(
        etcd.endpoints,
        ca=etcd.ca,
        certificate=etcd.certificate,
        key=etcd.key,
        user=etcd.user,
        password=etcd.password,
    )


def instance_id(etcd: EtcdSection) -> str:
    return etcd.instance_id if etcd.instance_id is not None else socket.gethostname()


@dataclass(slots=True)
class _Outcome:
    refusal: str | None = None
    key: str | None = None


class FleetSync:
    """The sync task of one supervisor, and what `sozu status` shows of it."""

    def __init__(
        self,
        etcd: EtcdSection,
        mutations: Mutations,
        max_request_size: int | None,
        client_factory: Callable[[EtcdSection], EtcdClient] = client_for,
        version: str = "",
    ) -> None:
        self.version = version
        self.etcd = etcd
        self.mutations = mutations
        self.max_request_size = max_request_size
        self.client_factory = client_factory
        self.prefix = normalize_prefix(etcd.prefix)
        self.instance_id = instance_id(etcd)
        self.phase: FleetPhase = "connecting"
        self.endpoint = etcd.endpoints[0]
        self.seen_revision = 0
        self.applied_revision = 0
        self.generation: int | None = None
        self.refused: FleetRefusal | None = None
        self.refusals = 0
        self.applies = 0
        self.unreachable: str | None = None
        # The desired state as last read: keys relative to the prefix -> values.
        self.mirror: dict[str, bytes] = {}
        # Seconds before the next attempt while etcd cannot be reached.
        self._delay = etcd.retry_min

    def status(self) -> FleetStatus:
        return FleetStatus(
            instance_id=self.instance_id,
            state_hash=self.mutations.state.hash(),
            version=self.version,
            prefix=self.prefix,
            phase=self.phase,
            endpoint=self.endpoint,
            seen_revision=self.seen_revision,
            applied_revision=self.applied_revision,
            generation=self.generation,
            refused=self.refused,
            refusals=self.refusals,
            unreachable=self.unreachable,
            workers={
                str(worker.id): worker.state_hash
                for worker in self.mutations.pool.live_workers()
                if worker.state != "draining"
            },
        )

    async def _refresh_workers(self) -> None:
        """Ask every running worker for its state hash (for the report)."""
        async with trio.open_nursery() as nursery:
            for worker in self.mutations.pool.live_workers():
                nursery.start_soon(self.mutations.pool.refresh, worker, REPORT_POLL * 8)

    async def run(self) -> None:
        """Follow etcd until cancelled; never raises for etcd's sake."""
        async with self.client_factory(self.etcd) as client:
            while True:
                try:
                    await self._follow(client)
                except Compacted as error:
                    log.warning("fleet: %s; reading the whole desired state again", error)
                    continue
                except (EtcdUnavailable, EtcdError) as error:
                    if self.phase != "unreachable":
                        log.warning("fleet: etcd unreachable (%s); serving the last state", error)
                    self.phase = "unreachable"
                    self.unreachable = str(error)
                await trio.sleep(self._delay)
                self._delay = min(self._delay * 2, self.etcd.retry_max)

    async def report(self) -> None:
        """Keep `<prefix>/instances/<instance_id>` up to date, attached to a lease that
        expires (and takes the key away) when this instance is gone."""
        key = (self.prefix + INSTANCES_DIR + self.instance_id).encode()
        delay = self.etcd.retry_min
        async with self.client_factory(self.etcd) as client:
            while True:
                try:
                    lease = await client.grant_lease(REPORT_LEASE_TTL)
                    delay = self.etcd.retry_min
                    written = b""
                    renewed = trio.current_time()
                    reported_revision = -1
                    while True:
                        if reported_revision != self.applied_revision:
                            # A change was applied: the workers' hashes are worth asking.
                            reported_revision = self.applied_revision
                            await self._refresh_workers()
                        document = msgspec.json.encode(self.status())
                        if document != written:
                            await client.put(key, document, lease)
                            written = document
                        await trio.sleep(REPORT_POLL)
                        if trio.current_time() - renewed >= REPORT_LEASE_TTL / 3:
                            if await client.keep_alive(lease) <= 0:
                                break  # the lease expired meanwhile: a new one
                            renewed = trio.current_time()
                            await self._refresh_workers()
                except (EtcdUnavailable, EtcdError) as error:
                    log.debug("fleet: cannot report to etcd: %s", error)
                    await trio.sleep(delay)
                    delay = min(delay * 2, self.etcd.retry_max)

    async def _follow(self, client: EtcdClient) -> None:
        state_prefix = (self.prefix + "state/").encode()
        revision, pairs = await client.range_prefix(state_prefix)
        self.endpoint = client.endpoint
        if self.phase == "unreachable":
            log.info("fleet: etcd reachable again at %s (revision %d)", self.endpoint, revision)
        self.unreachable = None
        self._delay = self.etcd.retry_min  # reached: the next failure starts the back-off over
        self.mirror = relative_kvs(self.prefix, pairs)
        self.seen_revision = revision
        await self._settle(revision)
        await client.watch(state_prefix, revision + 1, self._on_events)

    async def _on_events(self, events: list[Event]) -> None:
        for event in events:
            key = event.key.decode("utf-8", "replace")
            if not key.startswith(self.prefix):
                continue
            relative = key[len(self.prefix) :]
            if event.value is None:
                self.mirror.pop(relative, None)
            else:
                self.mirror[relative] = event.value
        revision = max(event.revision for event in events)
        self.seen_revision = max(self.seen_revision, revision)
        await self._settle(revision)

    async def _settle(self, revision: int) -> None:
        """Converge on the mirror as of `revision` (unless a push is half-written)."""
        self.generation = None
        raw = self.mirror.get(GENERATION)
        if raw is not None:
            try:
                generation = decode_generation(GENERATION, raw)
            except LayoutError as error:
                self._refuse(error.key, revision, error.message)
                self.phase = "following"
                return
            self.generation = generation.generation
            if not generation.complete:
                self.phase = "waiting_generation"
                return
        self.phase = "following"
        try:
            started = trio.current_time()
            target = build_target(self.mirror, self.max_request_size, self.etcd.address_map)
            log.debug(
                "fleet: target of revision %d built in %.3f s",
                revision,
                trio.current_time() - started,
            )
        except LayoutError as error:
            self._refuse(error.key, revision, error.message)
            return
        outcome = await self._apply(target)
        if outcome.refusal is not None:
            self._refuse(outcome.key or "state/", revision, outcome.refusal)
            return
        if self.refused is not None:
            log.info(
                "fleet: revision %d applied; the refusal at %d is over",
                revision,
                self.refused.revision,
            )
        self.refused = None
        self.applied_revision = revision

    async def _apply(self, target: ConfigState) -> _Outcome:
        """Run the convergence as a job of the mutation queue and wait for its end."""
        outcome = _Outcome()
        done = trio.Event()

        async def job(reply: Answering) -> None:
            try:
                if self.mutations.state.hash() == target.hash():
                    return
                started = trio.current_time()
                requests, problems = await self.mutations.converge(target)
                self.applies += 1
                log.info(
                    "fleet: %d requests applied in %.3f s%s",
                    len(requests),
                    trio.current_time() - started,
                    f" ({'; '.join(problems)})" if problems else "",
                )
            except StateError as error:
                outcome.refusal = str(error)
            except BindRefused as error:
                outcome.refusal = str(error)
                outcome.key = f"state/listeners/{error.proxy.lower()}/{error.address}"
            finally:
                done.set()

        while True:
            if self.mutations.submit(job, "FleetSync"):
                break
            await trio.sleep(0.1)  # the queue is full: wait for room
        await done.wait()
        return outcome

    def _refuse(self, key: str, revision: int, message: str) -> None:
        full_key = self.prefix + key
        if self.refused != FleetRefusal(key=full_key, revision=revision, message=message):
            log.error(
                "fleet: desired state at revision %d refused, keeping the last good state: %s: %s",
                revision,
                full_key,
                message,
            )
            self.refusals += 1
        self.refused = FleetRefusal(key=full_key, revision=revision, message=message)


def fleet_families(fleet: FleetSync) -> list[Metric]:
    """The sync's Prometheus metrics."""
    following = Metric("sozu_fleet_following", "1 while etcd is followed, else 0", "gauge")
    following.add_sample("sozu_fleet_following", {}, float(fleet.phase == "following"))
    applied = Metric("sozu_fleet_applied_revision", "etcd revision last applied", "gauge")
    applied.add_sample("sozu_fleet_applied_revision", {}, float(fleet.applied_revision))
    refused = Metric("sozu_fleet_refused", "desired states refused", "counter")
    refused.add_sample("sozu_fleet_refused_total", {}, float(fleet.refusals))
    failing = Metric("sozu_fleet_refusing", "1 while the latest desired state is refused", "gauge")
    failing.add_sample("sozu_fleet_refusing", {}, float(fleet.refused is not None))
    return [following, applied, refused, failing]
