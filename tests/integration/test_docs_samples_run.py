"""The README's native-API samples run against real services: the tansu broker of the session fixture
and the local PostgreSQL stand in for the addresses the README names (``localhost:9092`` and the
``test`` database), and an embedded ``JobManager`` runs the job in a fresh home. The unit part
(tests/unit/test_docs_samples.py) checks every other sample."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from docs_samples import Sample, all_samples, run_python_sample

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

README_KAFKA = '"localhost:9092"'
README_PG = "postgresql://postgres@127.0.0.1:5432/test"


async def _ensure_topic(bootstrap: str, name: str, partitions: int) -> None:
    """The README's topic (the session's broker may have it from an earlier test of the session)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if name not in await admin.list_topics():
            await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()


def _readme_samples() -> tuple[Sample, Sample]:
    python = [s for s in all_samples() if s.path.name == "README.md" and s.lang == "python"]
    first = next(s for s in python if s.option("run") == "integration")
    after = next(s for s in python if s.line > first.line and s.has("continues"))
    return first, after


async def test_the_readme_native_api_samples_run(kafka_bootstrap: str, pg_dsn: str, tmp_path: Path) -> None:
    """The first sample submits the job and reads its metrics; the one that continues it (savepoint,
    cancel, restart with an override, an upgrade from the savepoint) runs inside the same manager, on
    the job the first one submitted, with ``new_config`` the same pipeline renamed."""
    first, after = _readme_samples()
    await _ensure_topic(kafka_bootstrap, "transactions", 2)
    assert README_KAFKA in first.text and README_PG in first.text
    body = first.text.replace(README_KAFKA, repr(kafka_bootstrap)).replace(README_PG, pg_dsn)
    glue = textwrap.dedent(
        """\
        # test glue, not in the README: wait for the job to run, then the next sample's new_config
        for _ in range(600):
            if await jm.get_job_status(job_id) == JobStatus.RUNNING:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"the job is {await jm.get_job_status(job_id)}, not running, after 60 s")
        details = await jm.get_job_details(job_id)
        new_config = details.config.model_copy(update={"name": "realtime_analytics_v2"})
        """
    )
    program = (
        "import asyncio\n"
        + body
        + textwrap.indent(glue, "    ")
        + textwrap.indent(after.text, "    ")
        + "    print('savepoint', location)\n"
        + "    print('restarted', (await jm.get_job_details(job_id)).config.parallelism)\n"
        + "    print('new job', await jm.get_job_status(new_id))\n"
    )
    out = run_python_sample(first, tmp_path, Path(first.path).parent, {}, text=program)
    lines = out.splitlines()
    throughput, p99 = lines[0].split()
    assert float(throughput) >= 0 and float(p99) >= 0
    savepoint = lines[-3].removeprefix("savepoint ")
    assert Path(savepoint.removeprefix("file://")).exists(), savepoint
    assert lines[-2] == "restarted 8"  # the override of RestartOptions
    assert lines[-1] in ("new job submitted", "new job starting", "new job running"), lines[-1]
