"""The gate's answer to a call (shared/gate/types.py)."""

from __future__ import annotations

import dataclasses

from shared.gate.types import Admission


def test_a_passed_on_slot_copies_every_field_but_owners_and_waiter() -> None:
    """Admission.passed is a copy made by hand: a field added to Admission and left out would be lost on
    every passed-on slot (a lease, a generation fencing off stale outcomes)."""
    values = {f.name: f"v-{f.name}" for f in dataclasses.fields(Admission)}
    adm = Admission(**values)  # type: ignore[arg-type]
    got = adm.passed(7, "job-1")
    assert dataclasses.asdict(got) == {**values, "owners": 7, "waiter": "job-1"}
