"""Shared paths for the Python package's tests (run by tools/python_tests.sh)."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
DATA = ROOT / "tests" / "data"
MODELS = ["vit_tiny", "convnext_tiny", "swin_tiny"]


def skip_or_fail(why: str) -> None:
    """As tests/common's skip_or_fail: under CI a test runs for real or fails."""
    if os.environ.get("CI"):
        pytest.fail(f"{why}; CI is set, so it must run: provide what it needs")
    pytest.skip(why)


@pytest.fixture(scope="session")
def cli() -> Path:
    """The `wstream` binary built from this tree (WSTREAM_BIN, else target/release/wstream)."""
    path = Path(os.environ.get("WSTREAM_BIN", ROOT / "target" / "release" / "wstream"))
    if not path.exists():
        skip_or_fail(f"no wstream binary at {path} (cargo build --release)")
    return path


def run_cli(cli: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(cli), *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="session")
def large_dir() -> Path:
    """The three synthetic Large models (WSTREAM_LARGE_DIR; tools/python_tests.sh makes them)."""
    d = os.environ.get("WSTREAM_LARGE_DIR")
    if not d or not all((Path(d) / a / "config.json").exists() for a in LARGE):
        skip_or_fail("WSTREAM_LARGE_DIR does not hold the three synthetic Large models")
    return Path(d)


LARGE = ["vit_large_patch16_224", "convnext_large", "swin_large_patch4_window7_224"]


def membox() -> list:
    return ["bash", str(ROOT / "tools" / "membox")]
