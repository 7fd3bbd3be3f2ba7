"""Which folders training data may be read from.

On a public deployment the Data and Train pages take a folder path typed by a stranger;
without a limit that path could point anywhere the server can read. The setting
``CXR_ALLOWED_DATA_ROOTS`` (folders separated by ``os.pathsep``; the app also takes it
from ``st.secrets``) lists the folders data may come from. Unset, as on a user's own
machine, every folder the user can read is allowed. Paths are resolved, symlinks
followed, before they are compared, so neither ``..`` nor a link can lead outside.
"""

from __future__ import annotations

from pathlib import Path

from cxr_core.errors import UserError
from cxr_core.settings import allowed_data_roots_setting, cache_dir

ENV = "CXR_ALLOWED_DATA_ROOTS"


def _resolve(path: str | Path) -> Path:
    try:
        return Path(path).expanduser().resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Python < 3.13)
        raise UserError(f"{path}: symlink loop or unreadable path") from None


def allowed_data_roots() -> list[Path] | None:
    """The resolved allowed folders, or None when every folder is allowed (local use).

    The cache folder is always allowed: the synthetic data set is made there by CXR Lab
    itself.
    """
    raw = allowed_data_roots_setting()
    if raw is None:
        return None
    return [*(_resolve(p) for p in raw), _resolve(cache_dir())]


def is_allowed(path: str | Path, roots: list[Path] | None) -> bool:
    """Whether ``path`` (resolved here) lies inside one of ``roots`` (None: anything)."""
    if roots is None:
        return True
    try:
        resolved = _resolve(path)
    except UserError:
        return False
    return any(resolved.is_relative_to(root) for root in roots)


def check_data_root(path: str | Path) -> Path:
    """``path`` resolved, or a :class:`UserError` if the setting does not allow it.

    Checked before anything else about the folder is looked at, so a refused path does
    not even reveal whether it exists.
    """
    resolved = _resolve(path)
    roots = allowed_data_roots()
    if not is_allowed(resolved, roots):
        raise UserError(
            f"{path}: outside the folders this deployment may read data from "
            f"({', '.join(map(str, roots))}); ask the operator to add it to {ENV}"
        )
    return resolved
