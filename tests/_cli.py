"""What the command-line tests share."""
from scoresde.cli import main


def refused(capsys, argv, *words):
    """main(argv) exits 2 with one stderr line that names each of `words` (flag, given, why)."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scoresde: error: "), captured.err
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]
