from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from ocean_c2d.cli import main


def test_version_prints_the_installed_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out == f"ocean-c2d {version('ocean-c2d')}\n"


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "ocean-c2d"
    result = subprocess.run([str(script), "version"], capture_output=True, text=True, check=True)
    assert result.stdout.startswith("ocean-c2d ")


@pytest.mark.parametrize("command", ["version", "run", "configure", "filter", "publish"])
def test_every_program_of_the_image_is_a_subcommand(command: str) -> None:
    from ocean_c2d.cli import build_parser

    assert build_parser().parse_args([command]).command == command
