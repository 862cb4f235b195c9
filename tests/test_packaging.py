"""The wheel installs one import package, ``spanprism``, and works from a user's project root full of look-alikes.

A user's FastAPI/Django/Alembic project usually has its own ``api/``, ``models/`` and ``migrations/``; ours must never
shadow theirs nor be shadowed by them, so nothing of ours installs as a bare top-level name.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

from spanprism.ingest import otlp_proto

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("api", "attribution", "ingest", "models", "migrations")


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {
        "spanprism." + ".".join(init.parent.relative_to(ROOT).parts)
        for folder in FOLDERS
        for init in (ROOT / folder).rglob("__init__.py")
    }
    assert listed == on_disk


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Build from a clean copy of the tracked files: setuptools stages into ./build, where modules moved or deleted
    # since an earlier build would linger and ship in the wheel (and the test would litter the work tree).
    src = tmp_path_factory.mktemp("src")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
        check=True,
        capture_output=True,
    )
    (found,) = out.glob("spanprism-*.whl")
    return found


def test_wheel_holds_exactly_one_top_level_package(wheel: Path):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"spanprism"}
    assert "spanprism/migrations/script.py.mako" in names
    assert "spanprism/attribution/classifier/artifacts/classifier-v1.json" in names
    assert any(n.startswith("spanprism/attribution/simulator/data/mooncake_") for n in names)
    if otlp_proto.NATIVE or os.environ.get("SPANPRISM_REQUIRE_NATIVE"):  # a compiler is here: the wheel carries it
        assert any(n.startswith("spanprism/ingest/_otlp_native.") and n.endswith((".so", ".pyd")) for n in names)


@pytest.mark.slow
def test_installed_wheel_works_beside_a_users_own_api_and_models(wheel: Path, tmp_path: Path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(subprocess.check_output([py, "-c", purelib], text=True).strip())
    # Dependencies come from this test run's environment (a path entry, so its editable spanprism hook never runs);
    # the package itself only from the wheel, unpacked as pip would install it.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    # A user's project root with folders named like ours.
    project = tmp_path / "project"
    for name in ("api", "models", "migrations"):
        (project / name).mkdir(parents=True)
        (project / name / "__init__.py").write_text("WHOSE = 'user'\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SPANPRISM_DB")}

    def run(code: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([py, "-c", code], cwd=project, env=env, capture_output=True, text=True, timeout=120)

    # Their folders stay theirs; no bare package of ours exists to collide with them.
    assert run("import api, models, migrations; print(api.WHOSE, models.WHOSE, migrations.WHOSE)").stdout.split() == [
        "user",
        "user",
        "user",
    ]
    other = tmp_path / "elsewhere"
    other.mkdir()
    for bare in ("api", "models", "attribution", "ingest", "migrations"):
        proc = subprocess.run([py, "-c", f"import {bare}"], cwd=other, env=env, capture_output=True, text=True)
        assert proc.returncode != 0, f"`import {bare}` works in a venv holding only our wheel"
    located = run("import spanprism.api.cli as c; print(c.__file__)").stdout.strip()
    assert located.startswith(str(site)), located
    db = tmp_path / "user.duckdb"
    cli = "import sys; from spanprism.api.cli import main; sys.exit(main(sys.argv[1:]))"
    for action in ("upgrade", "current"):
        proc = subprocess.run(
            [py, "-c", cli, "--db", str(db), "db", action],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip(), "db current printed no revision"
