"""Hash shards of the series keys and their leases in the state database: how ``spanprism worker`` processes split
the attribution passes between them.

Every series key belongs to one of :data:`SHARDS` shards (a stable hash, the same in every process and release).
``shard_leases`` holds one row per shard: who holds it (``owner``, and the ``token`` of that one claim), until when
(``expires_at``), when its last pass finished and how far that pass's data reached (``covered_until``, where the
next incremental pass of the shard starts). A worker:

1. :func:`claim` s the next *due* shard (never passed, or last finished before the caller's ``due_before``) that
   nobody holds or whose lease expired — one conditional ``UPDATE`` of a row picked with ``FOR UPDATE SKIP
   LOCKED``, so two workers never get the same shard and neither waits on the other (a claim that takes over an
   expired lease names the old holder in ``Lease.taken_from``: evidence that it died or stalled);
2. :func:`renew` s the lease while it works (an ``UPDATE`` that matches only its own token: a worker that lost the
   lease learns it there);
3. writes the shard's results in transactions that first :func:`fence` the lease (lock its row and check the
   token and expiry): a worker that stalled past its lease and was taken over cannot overwrite the new holder's
   results, and a takeover waits for a write in flight to commit;
4. :func:`finish` es (release, ``last_finished_at``, ``covered_until``), or :func:`release` s after a failure so
   another worker retries at once.

The nightly pass uses the same leases with another notion of *due*: a shard is due for the nightly *slot* (the
nightly cron's latest firing time) when its ``nightly_slot`` is older or unset; finishing it records the slot, so
across any number of workers each shard's nightly runs once per slot (a worker killed mid-nightly records nothing,
and the shard is due again once its lease expires). A shard's first pass covers all history, as a nightly does,
and records the slot too.

A worker killed mid-pass leaves its lease to expire; the shard is then due and unheld, and the next claim takes it.
Results are idempotent per shard and window (stable regression ids, the replayed span replaced in one
transaction), so a pass run twice after a takeover changes nothing. Only PostgreSQL is shared between processes;
the SQL also runs on DuckDB (one process, tests of the rules).
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from spanprism.models.state import StateCursor, dialect_of
from spanprism.models.times import as_utc

#: Fixed for the life of a deployment: changing it would move series between shards mid-history.
SHARDS = 64


class LeaseLost(RuntimeError):
    """The lease expired and another worker may hold the shard now: this worker must not write its results."""


def shard_of(series_key: str) -> int:
    """The shard of a series key: a stable hash (not Python's ``hash``, which is salted per process)."""
    return int.from_bytes(hashlib.blake2b(series_key.encode(), digest_size=8).digest(), "big") % SHARDS


def keys_of(shard: int, keys: Iterable[str]) -> list[str]:
    """The keys of ``keys`` that belong to ``shard``, sorted."""
    return sorted(k for k in keys if shard_of(k) == shard)


@dataclass(frozen=True)
class Lease:
    """One claim of one shard: the token tells this claim from a later one of the same owner."""

    shard: int
    owner: str
    token: str
    expires_at: datetime
    covered_until: datetime | None  # the data end of the shard's last finished pass (None: never passed)
    nightly_slot: datetime | None = None  # set: a nightly claim, for this slot
    #: The holder whose lease had expired when this claim took the shard over (None: the shard was free).
    taken_from: str | None = None


def ensure_shards(cur: StateCursor) -> None:
    """Create the lease rows of every shard (idempotent; workers starting together may all call it)."""
    present = {r[0] for r in cur.execute("SELECT shard FROM shard_leases").fetchall()}
    insert = "INSERT INTO shard_leases (shard, passes) VALUES (?, 0) ON CONFLICT (shard) DO NOTHING"
    for shard in range(SHARDS):
        if shard not in present:
            cur.execute(insert, [shard])


def claim(cur: StateCursor, owner: str, *, now: datetime, lease_s: float, due_before: datetime | None = None,
          nightly_slot: datetime | None = None) -> Lease | None:  # fmt: skip
    """Take the next due shard nobody holds (or whose lease expired before ``now``); None when there is none.

    Due: last finished before ``due_before`` (an incremental pass), or, with ``nightly_slot``, not yet re-detected
    for that slot (a nightly pass)."""
    skip = " FOR UPDATE SKIP LOCKED" if dialect_of(cur) == "postgresql" else ""
    if nightly_slot is not None:
        due, order, param = "(nightly_slot IS NULL OR nightly_slot < ?)", "nightly_slot NULLS FIRST", nightly_slot
    elif due_before is not None:
        due, order, param = (
            "(last_finished_at IS NULL OR last_finished_at < ?)",
            "last_finished_at NULLS FIRST",
            due_before,
        )
    else:
        raise ValueError("claim needs due_before (incremental) or nightly_slot (nightly)")
    row = cur.execute(
        f"SELECT shard, owner FROM shard_leases WHERE (owner IS NULL OR expires_at <= ?) AND {due}"
        f" ORDER BY {order}, shard LIMIT 1{skip}",
        [now, param],
    ).fetchall()
    if not row:
        return None
    token, expires = secrets.token_hex(8), now + timedelta(seconds=lease_s)
    # Conditional: on DuckDB (no row locks) the row may have been taken since the SELECT; then nothing matches.
    taken = cur.execute(
        "UPDATE shard_leases SET owner = ?, token = ?, expires_at = ?, last_started_at = ?"
        " WHERE shard = ? AND (owner IS NULL OR expires_at <= ?) RETURNING shard, covered_until",
        [owner, token, expires, now, row[0][0], now],
    ).fetchall()
    if not taken:
        return None
    return Lease(int(taken[0][0]), owner, token, expires, as_utc(taken[0][1]), nightly_slot, taken_from=row[0][1])


def renew(cur: StateCursor, lease: Lease, *, now: datetime, lease_s: float) -> Lease:
    """Extend the lease from ``now``; raises :class:`LeaseLost` when it is no longer this claim's (taken over)."""
    expires = now + timedelta(seconds=lease_s)
    rows = cur.execute("UPDATE shard_leases SET expires_at = ? WHERE shard = ? AND token = ? RETURNING shard",
                       [expires, lease.shard, lease.token]).fetchall()  # fmt: skip
    if not rows:
        raise LeaseLost(f"shard {lease.shard}: lease lost")
    return dataclasses.replace(lease, expires_at=expires)


def fence(cur: StateCursor, lease: Lease, *, now: datetime) -> None:
    """Inside a results transaction: lock the lease row and check it is still this claim's and unexpired, or raise
    :class:`LeaseLost` (the transaction then rolls back, writing nothing)."""
    lock = " FOR UPDATE" if dialect_of(cur) == "postgresql" else ""
    rows = cur.execute(f"SELECT expires_at FROM shard_leases WHERE shard = ? AND token = ?{lock}",
                       [lease.shard, lease.token]).fetchall()  # fmt: skip
    if not rows or as_utc(rows[0][0]) <= now:  # type: ignore[operator]
        raise LeaseLost(f"shard {lease.shard}: lease lost before its results were written")


def finish(cur: StateCursor, lease: Lease, *, now: datetime, covered_until: datetime | None,
           nightly_slot: datetime | None = None) -> bool:  # fmt: skip
    """Release the shard after a successful pass, recording when and how far (and, for a pass that re-detected all
    its history, the nightly slot it stands for); False when the lease was lost."""
    rows = cur.execute(
        "UPDATE shard_leases SET owner = NULL, token = NULL, expires_at = NULL, last_finished_at = ?,"
        " covered_until = coalesce(?, covered_until), passes = passes + 1,"
        " nightly_slot = coalesce(?, nightly_slot) WHERE shard = ? AND token = ? RETURNING shard",
        [now, covered_until, nightly_slot, lease.shard, lease.token],
    ).fetchall()
    return bool(rows)


def release(cur: StateCursor, lease: Lease) -> None:
    """Give the shard back without recording a pass (after a failure: it stays due, another worker retries)."""
    cur.execute("UPDATE shard_leases SET owner = NULL, token = NULL, expires_at = NULL WHERE shard = ? AND token = ?",
                [lease.shard, lease.token])  # fmt: skip


def holders(cur: StateCursor) -> set[str]:
    """The workers holding a lease, expired or not (an expired one not yet taken over still names its holder)."""
    return {r[0] for r in cur.execute("SELECT DISTINCT owner FROM shard_leases WHERE owner IS NOT NULL").fetchall()}


def leases(cur: StateCursor) -> list[dict]:
    """Every shard's lease row (for ``spanprism worker --status`` and tests)."""
    cols = ("shard", "owner", "expires_at", "last_started_at", "last_finished_at", "covered_until", "passes",
            "nightly_slot")  # fmt: skip
    rows = cur.execute(f"SELECT {', '.join(cols)} FROM shard_leases ORDER BY shard").fetchall()
    return [dict(zip(cols, r, strict=True)) for r in rows]
