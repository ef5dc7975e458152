from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from events.sqlite_log import LogFileError, SqliteLog
from tests.log_contract import LogContract
from tests.records import registered


class TestSqliteLog(LogContract):
    @pytest.fixture
    async def log(self, tmp_path: Path) -> AsyncIterator[SqliteLog]:
        async with SqliteLog(tmp_path / "log.db", partitions=4) as log:
            yield log


@pytest.mark.anyio
async def test_reopening_keeps_records_and_partition_count(tmp_path: Path) -> None:
    async with SqliteLog(tmp_path / "log.db", partitions=3) as log:
        await log.append([registered("acme/kept")])
    async with SqliteLog(tmp_path / "log.db") as log:
        assert log.partitions == 3
        assert sum((await log.end_offsets()).values()) == 1
    with pytest.raises(LogFileError, match=r"log\.db: log has 3 partitions, asked for 5"):
        SqliteLog(tmp_path / "log.db", partitions=5)


@pytest.mark.anyio
async def test_a_batch_with_a_repeated_id_stores_it_once(tmp_path: Path) -> None:
    record = registered("acme/twice")
    async with SqliteLog(tmp_path / "log.db") as log:
        first, second = await log.append([record, record])
        assert not first.duplicate and second.duplicate
        assert (first.partition, first.offset) == (second.partition, second.offset)
        assert sum((await log.end_offsets()).values()) == 1
