"""The wire codecs are pure: no web, database or HTTP import, nothing of hub, store or agent."""

from __future__ import annotations

from pathlib import Path

import ordersync.wire
from tests.unit.test_layers import FORBIDDEN, imported_modules

WIRE = Path(ordersync.wire.__file__).parent
ALLOWED = ("ordersync.domain", "ordersync.errors", "ordersync.wire")


def test_the_codecs_import_no_io_library_and_no_outer_layer() -> None:
    """Every module under ordersync/wire imports only the standard library, orjson, the domain
    and other codecs (pydantic only for the domain models' types)."""
    files = sorted(WIRE.rglob("*.py"))
    assert len(files) >= 4, f"no codecs under {WIRE}"
    offenders = {
        f"{path.name}: {module}"
        for path in files
        for module in imported_modules(path, "ordersync.wire")
        if module.split(".")[0] in FORBIDDEN
        or (
            module.startswith("ordersync")
            and not any(module == a or module.startswith(f"{a}.") for a in ALLOWED)
        )
    }
    assert not offenders, sorted(offenders)
