"""What every sans-IO codec here shares: the NEED_DATA sentinel."""

from __future__ import annotations

from typing import ClassVar, Final


class NeedData:
    """Returned by a reader whose buffer does not hold a whole message yet."""

    _instance: ClassVar[NeedData | None] = None

    def __new__(cls) -> NeedData:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()
