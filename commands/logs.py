"""The one logging set-up every long-running command shares."""

from __future__ import annotations

import logging

from store.settings import Settings


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
