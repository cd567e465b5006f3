"""The docs hold what produced them: generated tables are current."""

from helpers import REPO, load_script


def test_every_included_table_in_the_docs_is_current(capsys):
    sync = load_script(REPO / "docs" / "sync.py", "docs_sync")
    assert sync.main(["--check"]) == 0, capsys.readouterr().out
