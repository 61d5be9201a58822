"""Assertions shared by the hx-infer CLI tests (pytest puts tests/ on sys.path)."""
from click.testing import CliRunner


def hx(*args, stdin: str | None = None):
    """Run `hx-infer ARGS` in this process -> click Result (exit_code, stdout, stderr, output)."""
    from hx_infer.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], input=stdin)



def assert_one_line_error(result, *needles: str) -> None:
    """Exit 2 with exactly one line on stderr, `hx-infer: error: ...`, naming each needle."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hx-infer: error: "), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
