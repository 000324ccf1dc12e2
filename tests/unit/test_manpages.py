"""sjob(1), sjobd(8) and README's reference tables come from one source and cannot drift."""

import shutil
import subprocess
from pathlib import Path

import pytest

from supervisor import environment, manpages
from supervisor.cli.commands import COMMANDS

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_tables_are_what_the_declarations_make() -> None:
    readme = README.read_text()
    assert manpages.readme_block_names(readme) == ["sjobd-options", "commands", "exit-status", "environment"]
    assert manpages.readme_with_blocks(readme) == readme, (
        "README is stale: python3 -m supervisor.manpages --readme README.md"
    )


def test_rewriting_readme_touches_only_its_generated_tables() -> None:
    text = "intro\n<!-- generated: environment (x) -->\nold\nrows\n<!-- end generated -->\nrest\n"
    new = manpages.readme_with_blocks(text)
    assert new.startswith("intro\n<!-- generated: environment (x) -->\n| variable |")
    assert new.endswith("\n<!-- end generated -->\nrest\n")
    assert manpages.readme_with_blocks(new) == new


def test_the_man_page_documents_every_command_option_and_variable() -> None:
    page = manpages.sjob_page().replace("\\-", "-")
    for command, _ in manpages.commands():
        assert f'.SS "sjob {command.name}"' in page
        for option in command.options:
            assert all(flag in page for flag in option.flags), option.flags
    for variable in environment.VARIABLES:
        assert f"\\fB{variable}\\fR" in page
    assert set(COMMANDS) <= {c.name.split()[0] for c, _ in manpages.commands()}


def test_sjobd_page_has_every_option_of_sjobd() -> None:
    from supervisor.daemon import argument_parser  # noqa: PLC0415

    page = manpages.sjobd_page().replace("\\-", "-")
    for action in argument_parser()._actions:
        for flag in action.option_strings:
            assert flag in page or flag in ("-h", "--help")


def test_roff_escapes_what_roff_would_read_as_requests() -> None:
    assert manpages.roff(".hidden\n'also\nback\\slash -x") == "\\&.hidden\n\\&'also\nback\\eslash \\-x"


@pytest.mark.skipif(shutil.which("groff") is None, reason="needs groff")
@pytest.mark.parametrize("page", ["sjob.1", "sjobd.8"])
def test_the_pages_render_without_warnings(page: str) -> None:
    text = manpages.sjob_page() if page == "sjob.1" else manpages.sjobd_page()
    result = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-z"], input=text.encode(), capture_output=True, check=False
    )
    assert (result.returncode, result.stderr) == (0, b"")
