"""The data spec a user names: a folder, or ``synthetic`` / ``synthetic:N``.

The one place a spec is parsed and turned into a folder, for the CLI, the engine and the
app alike. A folder is checked against the deployment's allowed roots before anything
else is looked at.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cxr_core.data.allowed_roots import check_data_root
from cxr_core.data.synthetic import synthetic_dataset
from cxr_core.errors import UserError

SYNTHETIC = "synthetic"
SYNTHETIC_PER_CLASS = 150
"""Images per class of a bare ``synthetic`` spec."""


@dataclass(frozen=True)
class DataSpec:
    """A parsed spec: ``folder`` for real data, else ``per_class`` synthetic images."""

    folder: str | None = None
    per_class: int | None = None

    @classmethod
    def parse(cls, text: str) -> DataSpec:
        text = str(text).strip()
        if not text:
            raise UserError("name the data: a folder in the Kaggle layout, or synthetic[:N]")
        if "\x00" in text:
            raise UserError("the folder path contains a NUL character")
        if text == SYNTHETIC or text.startswith(f"{SYNTHETIC}:"):
            count = text.partition(":")[2]
            if count and not count.isdigit():
                raise UserError("use synthetic or synthetic:N with N images per class")
            per_class = int(count or SYNTHETIC_PER_CLASS)
            if not 2 <= per_class <= 5000:
                raise UserError("synthetic:N needs N between 2 and 5000 images per class")
            return cls(per_class=per_class)
        return cls(folder=text)

    @property
    def synthetic(self) -> bool:
        return self.per_class is not None

    def __str__(self) -> str:
        return f"{SYNTHETIC}:{self.per_class}" if self.synthetic else str(self.folder)

    def resolve(self) -> Path:
        """The folder behind the spec: the synthetic set is made on first use; a folder
        must be allowed by the deployment and exist."""
        if self.synthetic:
            return synthetic_dataset(per_class=self.per_class)
        path = check_data_root(self.folder)  # first: a refused path reveals nothing
        if not path.is_dir():
            raise UserError(f"{path}: no such folder")
        return path


def resolve_data(spec: str) -> Path:
    """The folder behind a data spec string."""
    return DataSpec.parse(spec).resolve()


def is_synthetic_spec(spec: str | None) -> bool:
    """Whether ``spec`` names the synthetic demo set (a malformed spec does not)."""
    try:
        return DataSpec.parse(spec or "").synthetic
    except UserError:
        return False
