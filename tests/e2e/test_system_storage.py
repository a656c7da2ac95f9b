"""After the e2e tests (this module runs after test_compose.py): the machine's own container
storage holds no image the tests built under an official name, and on podman the tests did not
create that storage at all; the tests' stand-ins are named under localhost/jobpipe-test/ only.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import SYSTEM_STORAGE_EXISTED
from tests.e2e.engine import (
    STAND_IN_LABEL,
    STAND_IN_REPO,
    Engine,
    image_labels,
    inspect_image,
    is_project_name,
    made_by_suite,
    official_look_alikes,
    podman_paths,
    run,
    system_graphroot,
)

pytestmark = pytest.mark.e2e


def test_no_image_the_tests_built_carries_an_official_name_in_the_systems_storage(
        engine: Engine, request: pytest.FixtureRequest) -> None:
    pinned = [choice.pinned for choice in engine.images.values()]
    look_alikes = official_look_alikes(engine.kind, pinned)
    assert not look_alikes, (
        f"the system's {engine.kind} storage holds images built by the e2e tests under official "
        f"names: {look_alikes}. `python tests/e2e/engine.py legacy --remove` removes them.")
    if engine.kind == "podman":
        root = system_graphroot()
        existed = request.config.stash.get(SYSTEM_STORAGE_EXISTED, True)
        assert existed or not root.exists(), (
            f"the e2e tests created the system's podman storage {root}; they must use "
            f"{podman_paths().graphroot} only")
    print("\n".join(choice.describe() for choice in engine.images.values()))


def test_stand_ins_have_local_names_and_pinned_names_are_pulled_images(engine: Engine) -> None:
    for choice in engine.images.values():
        info = inspect_image(engine, choice.ref)
        assert info is not None, f"{choice.ref} is not in the engine's storage"
        if choice.kind == "stand-in":
            assert choice.ref.startswith(f"{STAND_IN_REPO}/"), choice
            assert image_labels(info).get(STAND_IN_LABEL) == choice.pinned, image_labels(info)
        else:
            assert choice.ref == choice.pinned and not made_by_suite(info), (choice, image_labels(info))
    if engine.kind == "podman":
        # The tests' own storage: whatever it holds under a name that is not the project's was
        # pulled, never built here.
        listing = run(["podman", "images", "--all", "--format", "json"], timeout=120,
                      env=engine.environ(), split_stderr=True).stdout
        for image in json.loads(listing or "[]"):
            official = [name for name in image.get("Names") or () if not is_project_name(name)]
            labels = image.get("Labels") or {}
            assert not (official and made_by_suite({"Labels": labels})), (official, labels)
