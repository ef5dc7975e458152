"""The frequency sketch: aged request counts per ref, remembered across evictions."""

from __future__ import annotations

import pytest

from mint.serving.sketch import FrequencySketch


def test_estimates_count_what_was_added_and_saturate_at_fifteen() -> None:
    sketch = FrequencySketch(64)
    sketch.add("t/a@r1", 3)
    sketch.add("t/a@r1")
    for _ in range(40):
        sketch.add("t/hot@r1")
    assert sketch.estimate("t/a@r1") == 4
    assert sketch.estimate("t/hot@r1") == 15
    assert sketch.estimate("t/never@r1") == 0


def test_collisions_only_overcount() -> None:
    sketch = FrequencySketch(16, sample_per_slot=1000)  # no halving here
    counts = {f"t/p{i}@r1": 1 + i % 5 for i in range(300)}  # far more refs than counters per row
    for ref, count in counts.items():
        sketch.add(ref, count)
    assert all(sketch.estimate(ref) >= count for ref, count in counts.items())


def test_aging_halves_every_count_after_a_sample() -> None:
    sketch = FrequencySketch(8, sample_per_slot=2)  # halves after 16 additions
    sketch.add("t/old@r1", 12)
    assert sketch.estimate("t/old@r1") == 12
    sketch.add("t/new@r1", 4)  # the 16th addition
    assert sketch.estimate("t/old@r1") == 6 and sketch.estimate("t/new@r1") == 2


def test_estimates_do_not_depend_on_the_process() -> None:
    # crc32, not Python's salted hash: a fixed ref lands on fixed counters in every process.
    sketch = FrequencySketch(1024)
    sketch.add("t/a@r1", 2)
    assert [sketch.estimate(f"t/p{i}@r1") for i in range(50)] == [0] * 50


def test_a_sketch_needs_a_capacity() -> None:
    with pytest.raises(ValueError, match="capacity"):
        FrequencySketch(0)
