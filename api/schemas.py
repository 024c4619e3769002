"""Body and response shapes that several resources share."""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

from pydantic import BaseModel, ValidationInfo, field_validator


class Deleted(BaseModel):
    """DELETE answers 200 with this body: Kubiya's client calls `.json()` on every response."""

    id: uuid.UUID
    deleted: bool = True


class PatchBody(BaseModel):
    """A PATCH body: fields left out stay as they are; `null` is refused for the fields listed
    in `required_if_sent`, whose columns cannot be empty."""

    required_if_sent: ClassVar[tuple[str, ...]] = ()

    @field_validator("*")
    @classmethod
    def refuse_null(cls, value: Any, info: ValidationInfo) -> Any:
        # A field validator, so the 422 names the field itself.
        if value is None and info.field_name in cls.required_if_sent:
            raise ValueError("cannot be null")
        return value

    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)
