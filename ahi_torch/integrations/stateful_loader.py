"""ResumableDataLoader: torchdata's ``StatefulDataLoader`` that also resumes with another number of workers.

``StatefulDataLoader`` saves where every worker stood and refuses (an ``assert``) a state saved
with another ``num_workers``. For ahi_torch's map-style datasets the workers hold no position of
their own: the sampler, in the main process, decides every index, and its state is inside the
loader's. So when the worker count changed, this loader hands the sampler its saved state and
starts fresh workers; the sampler continues exactly where the saved loader stood (and at another
world size too, see :class:`~ahi_torch.samplers.EpochSampler`).

>>> loader = ResumableDataLoader(dataset, batch_size=16, sampler=sampler, num_workers=8)
>>> loader.load_state_dict(state_saved_with_4_workers)
"""

from __future__ import annotations

from typing import Any

from torchdata.stateful_dataloader import StatefulDataLoader

from ..errors import ConfigError


def saved_workers(state: dict[str, Any]) -> int:
    """The ``num_workers`` a ``StatefulDataLoader`` state was saved with (0: in the main process)."""
    snapshot = state.get("_snapshot")
    return int(snapshot["_main_snapshot"]["_num_workers"]) if snapshot else 0


def saved_sampler_state(state: dict[str, Any]) -> dict[str, Any] | None:
    """The sampler's own state inside a ``StatefulDataLoader`` state (None if the sampler kept none)."""
    main = state["_snapshot"]["_main_snapshot"] if state.get("_snapshot") else state
    batches = main.get("_sampler_iter_state") or {}
    sampler_state = batches.get("sampler_state")
    return dict(sampler_state) if sampler_state is not None else None


class ResumableDataLoader(StatefulDataLoader):
    """A ``StatefulDataLoader`` whose state loads under any ``num_workers``; see the module docstring."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if saved_workers(state_dict) == self.num_workers:
            super().load_state_dict(state_dict)
            return
        if state_dict.get("_steps_since_snapshot", 0):
            raise ConfigError(
                "this loader state was saved between snapshots (snapshot_every_n_steps > 1); it can resume only "
                f"with the {saved_workers(state_dict)} workers it was saved with"
            )
        sampler_state = saved_sampler_state(state_dict)
        load = getattr(self.sampler, "load_state_dict", None)
        if sampler_state is None or load is None:
            raise ConfigError(
                f"this loader state was saved with {saved_workers(state_dict)} workers and its sampler kept no "
                f"position, so it cannot resume with {self.num_workers}; use the same num_workers"
            )
        finished = state_dict.get("_iterator_finished", False)
        if not finished:
            load(sampler_state)  # the next iteration continues where the saved one stood
