"""The read model's key scheme: what the worker writes and ``omni redis rebuild`` rewrites."""

from __future__ import annotations

from processors.domain.read_model import ReadModelWrite, stats_table_key, stats_write


def test_a_stats_record_is_a_field_per_channel_and_partition_of_its_rules_hash() -> None:
    key = stats_table_key("roaming_offer", "sms")
    assert key == b"roaming_offer|sms"  # the stats table's (changelogged) key
    assert stats_write(key, b'{"emitted":2.0}', 5) == ReadModelWrite(
        "omni:stats:roaming_offer", b'{"emitted":2.0}', field="sms|p5"
    )


def test_a_rule_id_with_a_bar_keeps_its_bar() -> None:
    write = stats_write(stats_table_key("a|b", "web"), b"{}", 0)
    assert (write.key, write.field) == ("omni:stats:a|b", "web|p0")
