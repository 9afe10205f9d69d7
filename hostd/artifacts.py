"""Model parameters as skops files shipped as package data: loaded and saved in one place.

Every model package loads its trained estimator the same way (from its own package data, never the
working directory; trusting only the types it names; checking it got the estimator it expects), and
its train script saves it the same way (checking the trusted-type list still fits the new file).
This module is that one copy. It needs skops, which model packages depend on; hostd itself does not,
so import it only from code that has skops.
"""

from __future__ import annotations

import argparse
import logging
import zipfile
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import skops.io as sio
from skops.io.exceptions import UntrustedTypesFoundException

T = TypeVar("T")
log = logging.getLogger("hostd.artifacts")


def load_skops(package: str, filename: str, expected_type: type[T], trusted: Sequence[str] = ()) -> T:
    """Load ``filename`` (a path inside ``package``) and check it holds an ``expected_type``.

    ``trusted`` names the types beyond skops' defaults the file may hold. Raises
    ``FileNotFoundError`` if the package has no such file, ``TypeError`` naming the file if it
    needs an untrusted type or holds something else.
    """
    where = f"{package}/{filename}"
    source = resources.files(package).joinpath(filename)
    if not source.is_file():
        raise FileNotFoundError(f"{where} is missing: train the model before installing the package")
    with resources.as_file(source) as path:
        try:
            loaded = sio.load(path, trusted=list(trusted))
        except UntrustedTypesFoundException as exc:
            raise TypeError(f"{where}: {exc}") from exc
    if not isinstance(loaded, expected_type):
        raise TypeError(f"{where} holds a {type(loaded).__name__}, not a {expected_type.__name__}")
    return loaded


def save_skops(obj: object, path: Path, trusted: Sequence[str] = ()) -> int:
    """Write ``obj`` to ``path`` with skops; returns the number of bytes written.

    Raises ``ValueError`` (writing nothing) unless ``trusted`` names exactly the types beyond skops'
    defaults that the file needs, so the loader's list is checked whenever the model is retrained.
    """
    data = sio.dumps(obj, compression=zipfile.ZIP_DEFLATED)
    needed = sorted(sio.get_untrusted_types(data=data))
    if needed != sorted(trusted):
        raise ValueError(f"the trusted types {sorted(trusted)} do not fit {path.name}: it needs exactly {needed}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return len(data)


def train_command(argv: list[str] | None, *, description: str, output: Path, trusted: Sequence[str],
                  load_training_data: Callable[[], tuple[Any, Any]], make_estimator: Callable[[], Any],
                  score: str) -> None:
    """What every model package's ``python -m <package>.train`` does: report a 5-fold
    cross-validated ``score`` (the estimator's own ``score``: accuracy, R²...), fit on all the data
    and save it with ``save_skops``. ``--output`` writes elsewhere than the package's own file."""
    from sklearn.model_selection import cross_val_score

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--output", type=Path, default=output, help="where to write model.skops")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    x, y = load_training_data()
    log.info("5-fold cross-validated %s: %.3f", score, cross_val_score(make_estimator(), x, y, cv=5).mean())
    size = save_skops(make_estimator().fit(x, y), args.output, trusted)
    log.info("wrote %s (%d bytes)", args.output, size)
