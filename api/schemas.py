"""Body and response shapes that several resources share."""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

from pydantic import BaseModel, model_validator


class Deleted(BaseModel):
    """DELETE answers 200 with this body: Kubiya's client calls `.json()` on every response."""

    id: uuid.UUID
    deleted: bool = True


class PatchBody(BaseModel):
    """A PATCH body: fields left out stay as they are; `null` is refused for the fields listed
    in `required_if_sent`, whose columns cannot be empty."""

    required_if_sent: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="after")
    def refuse_nulls(self) -> Any:
        for name in self.required_if_sent:
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"'{name}' cannot be null")
        return self

    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)
