"""Which versions of a model are loaded and which one answers by default: `<repository>/<name>/policy.json`.

One file per model, in the one place both halves already look (the model's folder), after Triton's
`version_policy`: load the newest N versions (`latest`) or exactly some (`versions`); on top of that,
`pinned` names the version that answers requests that name none (a rollback), else the newest READY one.
No file means the defaults. Written atomically: a server polling the repository never reads half a file.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bundle.atomic import write_text_atomic

POLICY_FILE = "policy.json"
DEFAULT_LATEST = 3


class VersionPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    latest: int | None = Field(DEFAULT_LATEST, ge=1, description="Load the newest N versions (Triton's `latest`).")
    versions: list[int] | None = Field(None, description="Load exactly these versions (Triton's `specific`).")
    pinned: int | None = Field(None, ge=1, description="The version that answers by default; None: newest READY.")

    @model_validator(mode="after")
    def _one_selection(self) -> VersionPolicy:
        if self.versions is not None:
            self.latest = None
        return self

    def selects(self, available: list[int]) -> list[int]:
        """The versions to load out of `available`; a pinned version is always among them."""
        chosen = sorted(available)[-self.latest :] if self.latest else [v for v in available if v in self.versions]
        if self.pinned in available and self.pinned not in chosen:
            chosen.append(self.pinned)
        return sorted(chosen)

    def serving_order(self, versions: list[int]) -> list[int]:
        """`versions` in the order they are tried for the default answer: the pinned one, then the newest first.
        The first that is loaded answers (the server's registry and `python -m batch` both pick so)."""
        pinned = [self.pinned] if self.pinned in versions else []
        return pinned + sorted((v for v in versions if v not in pinned), reverse=True)

    def describe(self) -> str:
        selection = f"latest {self.latest}" if self.latest else f"versions {self.versions}"
        return selection + (f", pinned to {self.pinned}" if self.pinned else "")


def read(model_folder: Path) -> VersionPolicy:
    path = Path(model_folder) / POLICY_FILE
    return VersionPolicy.model_validate_json(path.read_bytes()) if path.is_file() else VersionPolicy()


def write(model_folder: Path, policy: VersionPolicy) -> None:
    write_text_atomic(Path(model_folder) / POLICY_FILE, policy.model_dump_json(indent=2) + "\n")
