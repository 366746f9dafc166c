"""Typed options of the storage techniques (pydantic only: recipes validate fast)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class PackConfig(BaseModel):
    """The packed storage file: no options; every tensor gets the smallest lossless codec."""

    model_config = ConfigDict(extra="forbid", frozen=True)
