"""How checkpoints lie in the store, read and removed in bulk: one LIST of the
whole prefix grouped by step, and deleting a step manifest first (so a half
deleted checkpoint is never visible)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pailfs.checkpoint.manifest import manifest_key, step_of_key, step_prefix
from pailfs.store.base import ObjectStore


@dataclass
class StepScan:
    """What one LIST says about one step prefix."""

    keys: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    committed: bool = False
    newest: float = 0.0


async def scan_steps(store: ObjectStore) -> dict[int, StepScan]:
    """One LIST of everything under the prefix, grouped by step."""
    steps: dict[int, StepScan] = {}
    async for page in store.list_pages(""):
        for obj in page.objects:
            step = step_of_key(obj.key)
            if step is None:
                continue
            s = steps.setdefault(step, StepScan())
            s.keys.append(obj.key)
            s.sizes[obj.key] = obj.size
            s.newest = max(s.newest, obj.mtime)
            if obj.key == manifest_key(step):
                s.committed = True
    return steps


async def delete_step(store: ObjectStore, step: int, keys: list[str] | None = None) -> None:
    """Manifest first, so a half-deleted checkpoint is never visible."""
    await store.delete(manifest_key(step))
    if keys is None:
        keys = [o.key for o in (await store.list(step_prefix(step))).objects]
    rest = [k for k in keys if k != manifest_key(step)]
    if rest:
        await store.delete_many(rest)
