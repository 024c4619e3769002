"""The report buffer's merging of waiting chunks: bounded, and no text lost or doubled."""

from __future__ import annotations

from activities.report_buffer import merge_chunks
from workflows.contracts import EventReport, ReportItem, StatusUpdate


def chunk(index: int, text: str, *, attempt: int = 1, final: bool = False) -> ReportItem:
    data = {"content": text, "message_id": "m", "attempt": attempt, "step": 0, "is_final": final}
    return ReportItem(event=EventReport("e", "message_chunk", data, f"chunk:1:0:{attempt}:{index}"))


def test_waiting_chunks_of_one_message_merge_in_order() -> None:
    status = ReportItem(status=StatusUpdate("e", "running"))
    items = [
        status,
        chunk(1, "a"),
        chunk(2, "b"),
        chunk(3, "c", final=True),
        chunk(1, "x", attempt=2),
    ]
    merged = merge_chunks(items)
    assert merged[0] is status
    assert len(merged) == 3
    first = merged[1].event
    assert first is not None
    assert first.data["content"] == "abc" and first.data["is_final"] is True
    assert first.event_key == "chunk:1:0:1:1"  # the first one's key: none was sent yet
    other = merged[2].event
    assert other is not None and other.data["content"] == "x" and other.data["attempt"] == 2


def test_a_final_chunk_ends_a_merge() -> None:
    merged = merge_chunks([chunk(1, "a", final=True), chunk(2, "b")])
    assert [m.event.data["content"] for m in merged if m.event] == ["a", "b"]
