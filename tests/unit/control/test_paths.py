"""control/paths.py: which local files a job from a network client may name (real files, real symlinks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from heliosdb_streaming.control.paths import AllowedRoots, job_path_errors, local_location, location_error
from heliosdb_streaming.model.config import JobConfig


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    home, data, outside = tmp_path / "home", tmp_path / "data", tmp_path / "outside"
    for d in (home, data, outside):
        d.mkdir()
    (outside / "secret.json").write_text('{"a": 1}\n')
    (home / "in.json").write_text('{"a": 1}\n')
    return {"home": home, "data": data, "outside": outside}


def roots_of(layout: dict[str, Path], *, base: bool = True) -> AllowedRoots:
    return AllowedRoots.of([layout["home"], layout["data"]], base=layout["home"] if base else None)


def job(
    source: str | None = None, sink: str | None = None, storage: str | None = None, db: str | None = None
) -> JobConfig:
    sources: list[dict[str, Any]] = [{"type": "file", "config": {"path": source}}] if source else []
    sinks: list[dict[str, Any]] = []
    if sink:
        sinks.append({"type": "file", "config": {"path": sink}})
    if db:
        sinks.append({"type": "database", "config": {"connection_string": db, "table": "t"}})
    return JobConfig.from_dict(
        {
            "name": "paths",
            "config": {"checkpoint_storage": storage} if storage else {},
            "sources": sources or [{"type": "datagen", "config": {}}],
            "sinks": sinks or [{"type": "discard", "config": {}}],
        }
    )


def fields(config: JobConfig, roots: AllowedRoots) -> list[str]:
    return [e.path for e in job_path_errors(config, roots)]


def test_paths_inside_the_roots_are_allowed(layout: dict[str, Path]) -> None:
    roots = roots_of(layout)
    home, data = layout["home"], layout["data"]
    config = job(
        source=str(home / "in.json"),
        sink=str(data / "out-{task}.jsonl"),
        storage=(home / "checkpoints").as_uri(),
        db=f"sqlite:///{data}/x.db",
    )
    assert fields(config, roots) == []
    assert fields(job(source=str(data)), roots) == []  # a directory, even an empty one
    assert fields(job(sink=str(data / "new" / "deeper" / "out")), roots) == []  # not created yet


def test_absolute_paths_outside_are_refused_with_their_field(layout: dict[str, Path]) -> None:
    roots = roots_of(layout)
    outside = layout["outside"]
    config = job(
        source=str(outside / "secret.json"),
        sink=str(outside / "out"),
        storage=outside.as_uri(),
        db=f"sqlite:///{outside}/x.db",
    )
    errors = job_path_errors(config, roots)
    assert [e.path for e in errors] == [
        "sources[0].config.path",
        "sinks[0].config.path",
        "sinks[1].config.connection_string",
        "config.checkpoint_storage",
    ]
    assert all("outside the directories this server allows" in e.message for e in errors)
    assert str(layout["home"]) in errors[0].message
    assert fields(job(source="/etc/passwd"), roots) == ["sources[0].config.path"]
    assert fields(job(storage="file:///etc"), roots) == ["config.checkpoint_storage"]


def test_dotdot_cannot_climb_out(layout: dict[str, Path]) -> None:
    roots = roots_of(layout)
    home = layout["home"]
    assert fields(job(source=f"{home}/../outside/secret.json"), roots) == ["sources[0].config.path"]
    assert fields(job(source="../outside/secret.json"), roots) == ["sources[0].config.path"]
    assert fields(job(sink="../../../../tmp/x"), roots) == ["sinks[0].config.path"]
    assert fields(job(source=f"{home}/*/../../outside/*.json"), roots) == ["sources[0].config.path"]
    assert fields(job(source=f"{home}/sub/../in.json"), roots) == []  # stays inside: fine


def test_symlinks_are_followed(layout: dict[str, Path]) -> None:
    roots = roots_of(layout)
    home, outside = layout["home"], layout["outside"]
    (home / "escape").symlink_to(outside)
    (home / "leak.json").symlink_to(outside / "secret.json")
    (layout["data"] / "ok").symlink_to(home)  # between two roots: fine
    assert fields(job(source=str(home / "escape" / "secret.json")), roots) == ["sources[0].config.path"]
    assert fields(job(sink=str(home / "escape" / "out")), roots) == ["sinks[0].config.path"]
    assert fields(job(storage=(home / "escape").as_uri()), roots) == ["config.checkpoint_storage"]
    assert fields(job(source=str(layout["data"] / "ok" / "in.json")), roots) == []
    # a directory or glob source also has every file it matches now resolved
    assert fields(job(source=str(home)), roots) == ["sources[0].config.path"]
    assert fields(job(source=str(home / "*.json")), roots) == ["sources[0].config.path"]
    (home / "leak.json").unlink()
    assert fields(job(source=str(home)), roots) == []


def test_a_root_that_is_a_symlink_counts_as_its_target(tmp_path: Path, layout: dict[str, Path]) -> None:
    link = tmp_path / "home-link"
    link.symlink_to(layout["home"])
    roots = AllowedRoots.of([link], base=link)
    assert fields(job(source=str(layout["home"] / "in.json")), roots) == []
    assert fields(job(source=str(link / "in.json")), roots) == []


def test_relative_paths_are_relative_to_the_home(layout: dict[str, Path]) -> None:
    roots = roots_of(layout)
    assert roots.resolve("in.json") == layout["home"].resolve() / "in.json"
    assert fields(job(source="in.json", sink="out/{task}.jsonl", db="sqlite:///rel.db"), roots) == []
    # without a base (the operator: a pod's working directory is not known) they are refused
    no_base = roots_of(layout, base=False)
    errors = job_path_errors(job(source="in.json"), no_base)
    assert [e.path for e in errors] == ["sources[0].config.path"]
    assert "must be an absolute path" in errors[0].message


def test_tilde_is_the_server_users_home(layout: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(layout["outside"]))
    assert fields(job(source="~/secret.json"), roots_of(layout)) == ["sources[0].config.path"]
    monkeypatch.setenv("HOME", str(layout["data"]))
    assert fields(job(sink="~/x"), roots_of(layout)) == []


def test_start_locations(layout: dict[str, Path]) -> None:
    roots = roots_of(layout)
    assert location_error("s3://bucket/sp", roots, "from_savepoint") is None
    assert location_error((layout["home"] / "sp").as_uri(), roots, "from_savepoint") is None
    refused = location_error((layout["outside"]).as_uri(), roots, "spec.restoreFrom")
    assert refused is not None and refused.path == "spec.restoreFrom"
    plain = location_error("/etc", roots, "from_savepoint")
    assert plain is not None and plain.path == "from_savepoint"
    assert local_location("file:///a%20b/c") == "/a b/c"
    assert local_location("s3://b/p") is None


def test_prefix_names_spec_fields(layout: dict[str, Path]) -> None:
    errors = job_path_errors(job(source="/etc/passwd"), roots_of(layout), prefix="spec.")
    assert [e.path for e in errors] == ["spec.sources[0].config.path"]


def test_no_roots_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one"):
        AllowedRoots.of([], base=tmp_path)
