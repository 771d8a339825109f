from __future__ import annotations

from pydantic import Field

from protocol.config.base import Section


class RunSection(Section):
    name: str = Field(default="default", pattern=r"^[A-Za-z0-9_.-]+$",
                      description="Run name: prefixes Redis keys and names the output folder.")
    output_dir: str = Field(default="runs", description="Parent folder of the run's outputs.")
    seed: int = Field(default=0, description="Seed for data order, sampling and initialisation.")
