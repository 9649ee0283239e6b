"""A command's time accounting: each stage's own time and work, the rest as `other`, summing to the
wall time; nothing is recorded outside a recording."""

import time

from anchor import timings


def test_rows_are_each_stages_own_time_and_work_and_sum_to_the_wall_time():
    start = time.perf_counter()
    with timings.recording() as recorder:
        time.sleep(0.02)  # outside every stage
        with timings.stage("outer"):
            timings.count(tokens_generated=10, model_loads=1)
            time.sleep(0.05)
            with timings.stage("inner"):
                timings.count(tokens_generated=5, optimizer_steps=3)
                time.sleep(0.1)
        timings.count(tokens_read=7)  # outside every stage
        rows = {r["stage"]: r for r in recorder.rows()}
    wall = time.perf_counter() - start
    assert list(rows) == ["inner", "outer", "other"]
    assert rows["inner"]["tokens_generated"] == 5 and rows["inner"]["optimizer_steps"] == 3
    # the outer stage's own row excludes what ran inside the inner one
    assert rows["outer"]["tokens_generated"] == 10 and rows["outer"]["optimizer_steps"] == 0
    assert rows["outer"]["model_loads"] == 1
    assert 0.04 < rows["outer"]["seconds"] < rows["inner"]["seconds"]
    assert rows["other"]["tokens_read"] == 7 and rows["other"]["seconds"] >= 0.015
    assert abs(sum(r["seconds"] for r in rows.values()) - wall) < 0.01
    assert timings.largest(list(rows.values()), 1).startswith("inner ")


def test_nothing_is_recorded_outside_a_recording_and_recordings_nest_into_the_outer_one():
    with timings.stage("alone"):  # no recording open: a no-op
        timings.count(tokens_read=1)
    with timings.recording() as outer:
        with timings.recording() as inner:
            assert inner is outer
            with timings.stage("a"):
                pass
    assert [r["stage"] for r in outer.rows()] == ["a", "other"]
