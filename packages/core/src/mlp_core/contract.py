"""The base of the documents two packages share (image spec, tabular preprocessing, ...).

A contract is frozen, forbids unknown keys, and is read with :meth:`Contract.parse`, which
raises the *caller's* error type: mlp-data reports a bad document as a ``DataError``, a server
as a bundle error, and both messages list every problem with its key path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from mlp_core.errors import DataError, MlpError

C = TypeVar("C", bound="Contract")


class Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def parse(
        cls: type[C],
        raw: Mapping[str, Any],
        *,
        error: type[MlpError] = DataError,
        hint: str | None = None,
        source: str | None = None,
    ) -> C:
        """The document in ``raw``, or ``error`` naming every problem and where it is."""
        try:
            return cls.model_validate(dict(raw))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, err['loc'])) or '(top level)'}: {err['msg']}"
                for err in exc.errors()
            )
            raise error(f"invalid {source or cls.__name__}: {problems}", hint=hint) from None
