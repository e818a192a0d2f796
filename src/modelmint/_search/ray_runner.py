"""``--ray ADDRESS``: run the search's trials as Ray tasks on a cluster.

The study stays where it is (SQLite in the run directory, or ``--storage``); each Ray task opens
it, loads the data (once per Ray worker process), runs one trial through the same
:class:`~.driver.Search` objective as a local search and pickles the fitted model into the
trial's folder. The coordinating process then publishes the winner from that artifact, so the
run directory (and a SQLite study) must be on storage the Ray workers see: a local cluster, or a
shared file system with ``--storage postgresql://…``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from ..errors import DataError

_data_cache: dict[tuple[Any, ...], Any] = {}


def check_ray(address: str) -> None:
    try:
        import ray  # noqa: F401
    except ImportError as exc:
        raise DataError(f"--ray {address}: the 'ray' package is not installed "
                        "(pip install 'ray>=2.9')") from exc


def _remote_trial(opts_json: dict[str, Any], run_dir: str, deadline_wall: float) -> int:
    """One trial inside a Ray worker; returns the trial number it ran."""
    from .driver import Search, load_data, select_candidates
    from .options import TrainOptions
    from .study_storage import open_study

    opts = TrainOptions.from_json(opts_json)
    key = (opts.data, opts.seed, opts.strict, opts.group_by, opts.reject_dir,
           opts.label_column, opts.text_column)
    if key not in _data_cache:
        _data_cache[key] = load_data(opts)
    task, data = _data_cache[key]
    study = open_study(opts, Path(run_dir), data.task)
    # Monotonic clocks differ between processes: the deadline travels as wall-clock time.
    deadline = time.monotonic() + (deadline_wall - time.time())
    search = Search(opts, Path(run_dir), task, data, select_candidates(opts, task), study,
                    deadline, Console(quiet=True))
    before = len(study.get_trials(deepcopy=False))
    study.optimize(search.objective, n_trials=1, gc_after_trial=False)
    return before


def run_on_ray(search: Any, opts: Any) -> None:
    """Drive ``search`` (a :class:`~.driver.Search`) with trials on the Ray cluster: as many at
    a time as the cluster has CPUs, while the budget allows."""
    import ray

    ray.init(address=opts.ray, logging_level=logging.ERROR, log_to_driver=False)
    try:
        resources = ray.cluster_resources()  # type: ignore[no-untyped-call,unused-ignore]
        parallel = max(1, int(resources.get("CPU", 1)))
        remote = ray.remote(num_cpus=1, max_retries=0)(_remote_trial)
        deadline_wall = time.time() + search.seconds_left()
        started = 0
        while search.should_continue(0, started):
            n = parallel if opts.max_trials is None else min(
                parallel, opts.max_trials - search.trials_done())
            futures = [remote.remote(opts.to_json(), str(search.run_dir), deadline_wall)
                       for _ in range(n)]
            search.console.print(f"{n} trial(s) submitted to Ray at {opts.ray}")
            ray.get(futures)
            started += n
    finally:
        ray.shutdown()
